"""Kill and resume: a run killed in the middle of an epoch (the process exits at once, as under
SIGKILL) and continued with ``archc train --resume`` from its last step checkpoint
(``--save-every``) ends bit-identical to an uninterrupted run: same data order, augmentation,
optimizer state, schedule and the epoch's running sums. (SIGKILL itself, at three moments:
test_train_kill.py, slow tier.)"""
from __future__ import annotations

import json

from train_helpers import run_cli, write_random

from archc.runtime.run_state import read_latest
from archc.runtime.train import CRASH_ENV


def _flat(path):
    from safetensors.numpy import load_file
    return load_file(str(path))


def _same_checkpoint(a, b):
    """The latest orbax checkpoints of two runs: same step, position and history, and
    bit-identical state (variables, optimizer state)."""
    import jax

    (sa, ta, da, pa), (sb, tb, db, pb) = read_latest(a), read_latest(b)
    assert (sa, da) == (sb, db)
    for key in ("epoch", "train_loss", "val_loss", "lr"):
        assert pa["history"][key] == pb["history"][key], key
    la, lb = jax.tree_util.tree_leaves_with_path(ta), jax.tree_util.tree_leaves_with_path(tb)
    assert [p for p, _ in la] == [p for p, _ in lb] and la
    for (path, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), path


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    data = write_random(tmp_path / "data", classes=3, per_class=12, mode="L")
    # 36 images, 20% held out -> 30 train (per class: 12 - 2), batch 8 -> 3 steps per epoch
    args = ["train", "lenet5", "--data", data, "--epochs", 3, "--batch", 8, "--seed", 7,
            "--optimizer", "sgd", "--lr", 0.05, "--schedule", "cosine", "--warmup", 1,
            "--crop-scale", "0.5,1", "--save-every", 2, "--quiet"]
    full = run_cli([*args, "--out", tmp_path / "full"])
    assert full.returncode == 0, full.stderr

    killed = run_cli([*args, "--out", tmp_path / "killed"], env={CRASH_ENV: "5"})  # epoch 2, step 2
    assert killed.returncode == 86, killed.stderr
    run = tmp_path / "killed"
    m = json.loads((run / "metrics.json").read_text())
    assert m["epoch"] == [1]                                    # only the complete epoch
    assert (run / "curves.png").is_file()                      # drawn after every epoch
    step, _, position, _ = read_latest(run)                    # orbax's: step 4 = epoch 2, batch 1
    assert (step, position["epoch"], position["batch"]) == (4, 1, 1) and position["iterator"]   # grain's state

    resumed = run_cli(["train", "--resume", run, "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "after epoch 1, batch 1" in resumed.stderr   # step 4's checkpoint

    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    for key in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                "best_epoch", "best_val_accuracy"):
        assert a[key] == b[key], key
    _same_checkpoint(tmp_path / "full", run)
    for name in ("last.safetensors", "best.safetensors"):
        fa, fb = _flat(tmp_path / "full" / name), _flat(run / name)
        assert fa.keys() == fb.keys()
        for k in fa:
            assert fa[k].tobytes() == fb[k].tobytes(), (name, k)
    assert (run / "curves.png").is_file()
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
