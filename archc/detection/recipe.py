"""torchvision's detection training recipe (references/detection/train.py), scaled to the batch:
the defaults ``archc train`` uses for a detector where the user sets nothing else.

SGD, momentum 0.9, weight decay 1e-4, learning rate 0.02 for 16 images a batch (8 GPUs x 2)
scaled linearly (0.02 x batch / 16), a linear warm-up over the first min(1000, steps of an
epoch - 1) steps, and x0.1 at 16/26 and 22/26 of the epochs (its 26-epoch schedule's steps at
16 and 22, scaled to the run's epoch count)."""
from __future__ import annotations

BASE_LR, BASE_BATCH = 0.02, 16
MOMENTUM, WEIGHT_DECAY, GAMMA = 0.9, 1e-4, 0.1
WARMUP_STEPS = 1000
EPOCHS, STEPS = 26, (16, 22)


def detection_recipe(batch: int, epochs: int, steps_per_epoch: int, given=()) -> tuple[dict, str]:
    """The training settings of the recipe (TrainConfig's names) that the user did not set
    (``given``: the names they set), and the line that says them."""
    lr = BASE_LR * batch / BASE_BATCH
    warm = min(WARMUP_STEPS, max(steps_per_epoch - 1, 0))
    milestones = sorted({max(1, round(epochs * s / EPOCHS)) for s in STEPS if round(epochs * s / EPOCHS) < epochs})
    settings = {"optimizer": "sgd", "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, "lr": lr,
                "warmup_epochs": warm / max(steps_per_epoch, 1), "schedule": "step", "milestones": milestones,
                "gamma": GAMMA}
    given = set(given)
    if given & {"schedule", "milestones", "step_epochs", "gamma"}:     # the user's schedule, whole
        given |= {"schedule", "milestones", "gamma"}
    chosen = {k: v for k, v in settings.items() if k not in given}
    if "optimizer" in given:        # another optimizer: its own defaults, not SGD's settings
        chosen = {k: v for k, v in chosen.items() if k not in ("momentum", "lr", "weight_decay")}
    parts = []
    if "optimizer" in chosen:
        parts.append(f"SGD momentum {MOMENTUM}" if "momentum" in chosen else "SGD")
    if "lr" in chosen:
        parts.append(f"lr {lr:g} ({BASE_LR:g} x batch {batch} / {BASE_BATCH})")
    if "weight_decay" in chosen:
        parts.append(f"weight decay {WEIGHT_DECAY:g}")
    if "warmup_epochs" in chosen and warm:
        parts.append(f"linear warm-up over {warm} steps")
    if "milestones" in chosen and milestones:
        parts.append(f"x{GAMMA:g} at epoch{'s' * (len(milestones) > 1)} {' and '.join(map(str, milestones))}")
    line = ("recipe (torchvision's detection references, scaled to the batch): " + ", ".join(parts)) if parts else ""
    return chosen, line


__all__ = ["detection_recipe"]
