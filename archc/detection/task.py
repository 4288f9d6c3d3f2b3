"""The detection task (runtime/tasks.py's Task interface): a detector's losses from its
declarations, so that the generic training step (``tasks.make_train_step``) trains it.

``detect(kind=…)`` picks the loss (registry.py: ssd_loss.py, rcnn_loss.py, yolo_loss.py); a kind whose
network runs in stages (Faster R-CNN) also supplies the training forward (``apply``).
:func:`detection_losses` is ``archc.losses`` for detectors: torchvision's inputs (a list of
images in [0, 1], per image ``{"boxes", "labels"}``), the input transform applied as at
inference, the boxes scaled with the images (GeneralizedRCNNTransform's resize_boxes)."""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import numpy as np

from ..runtime.tasks import Task, TaskError, forward_fn
from .registry import loss_class, training_kinds
from .training import DetectionDataMixin


def loss_for(detector):
    """The loss of a detector kind (registry.py)."""
    cls = loss_class(detector.kind)
    if cls is None:
        raise TaskError(f"{detector.model.name}: detect(kind={detector.kind!r}) has no training loss; "
                        f"the kinds that train: {', '.join(sorted(training_kinds()))}")
    return cls(detector)


@dataclass(eq=False)
class Detection(DetectionDataMixin, Task):
    """Losses with torchvision's keys (their sum is the objective). Metrics: the losses' means
    over the batches (a mean of batch means), ``negative_loss`` (minus their sum), and COCO AP
    over the validation set, which the training loop's best checkpoint maximises (training.py:
    the data side)."""
    __hash__ = object.__hash__      # a cache key (its jitted loss), by identity
    __eq__ = object.__eq__

    def __post_init__(self):
        from .api import DetectError, detector_for
        self.name, self.score_name, self.score_label = "detection", "negative_loss", "-loss"
        try:
            self.detector = detector_for(self.model)
        except DetectError as e:
            raise TaskError(str(e)) from None
        self.loss = loss_for(self.detector)
        keys = tuple(importlib.import_module(type(self.loss).__module__).KEYS)
        self.train_sums = ("batches",) + keys + ("loss",)       # make_train_step's metrics
        self.train_metrics = keys + ("negative_loss",)
        self.val_metrics = ("loss",) + keys + ("negative_loss",)
        self.init_data_side()

    @property
    def outputs(self) -> tuple:
        return self.loss.outputs

    @property
    def num_classes(self) -> int:
        det = self.detector
        return det.grid.classes + 1 if det.kind == "yolo_v1" else det.classes

    def apply(self, variables, batch, *, train, rng=None, dtype=None):
        if hasattr(self.loss, "apply"):
            return self.loss.apply(variables, batch, train=train, rng=rng, dtype=dtype)
        return super().apply(variables, batch, train=train, rng=rng, dtype=dtype)

    def losses(self, outputs, batch, rng=None) -> dict:
        return self.loss.losses(outputs, batch, rng)

    def metric_sums(self, outputs, batch, *, full: bool = True) -> dict:
        import jax.numpy as jnp
        sums = {"batches": jnp.ones((), jnp.float32)}
        if full:
            parts = self.losses(outputs, batch)
            sums.update(parts, loss=sum(parts.values()))
        return sums

    def summarize(self, sums) -> dict:
        n = max(float(sums["batches"]), 1e-12)
        out = {k: float(v) / n for k, v in sums.items() if k != "batches"}
        if out:
            out["loss"] = out.get("loss", sum(out.values()))
            out["negative_loss"] = -out["loss"]
        return out


# --------------------------------------------------------------------------------------------
# archc.losses for detectors
# --------------------------------------------------------------------------------------------
def _targets(targets, n_images: int, classes: int) -> list:
    from .detector import DetectError
    if len(targets) != n_images:
        raise DetectError(f"{n_images} images but {len(targets)} targets: one {{'boxes', 'labels'}} per image")
    out = []
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
            raise DetectError(f"target {i}: a dict with 'boxes' (N, 4) and 'labels' (N,)")
        b = np.asarray(t["boxes"], np.float64).reshape(-1, 4) if np.size(t["boxes"]) else np.zeros((0, 4))
        lab = np.asarray(t["labels"]).reshape(-1)
        if len(lab) != len(b):
            raise DetectError(f"target {i}: {len(b)} boxes but {len(lab)} labels")
        if len(lab) and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 1 or lab.max() >= classes):
            raise DetectError(f"target {i}: labels are integers in 1..{classes - 1} (0 is the background), got {lab.tolist()}")
        bad = np.nonzero((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]))[0]
        if len(bad):
            raise DetectError(f"target {i}: box {int(bad[0])} {b[bad[0]].tolist()} has x2 <= x1 or y2 <= y1")
        out.append((np.asarray(t["boxes"]).reshape(-1, 4) if len(b) else b, lab.astype(np.int32)))
    return out


def detection_batch(task: Detection, images, targets) -> dict:
    """The task's batch (runtime/tasks.py) from torchvision's inputs: ``images`` (H, W, 3) in
    [0, 1] through the network's input transform, each image's ``targets`` ``{"boxes": (N, 4)
    xyxy in its pixels, "labels": (N,)}`` scaled with it and padded to the batch's largest N."""
    import jax.numpy as jnp
    from .images import as_images
    from .transform import rescale_boxes, transform
    ims = as_images(images)
    tg = _targets(list(targets), len(ims), task.num_classes)
    batch, sizes = transform([jnp.asarray(im) for im in ims], task.detector.transform_spec)
    n = max(1, max(len(lab) for _, lab in tg))
    boxes = np.zeros((len(ims), n, 4), batch.dtype)
    labels = np.zeros((len(ims), n), np.int32)
    for i, ((b, lab), im, size) in enumerate(zip(tg, ims, sizes)):
        if len(lab):
            boxes[i, :len(lab)] = np.asarray(rescale_boxes(jnp.asarray(b, batch.dtype), im.shape[:2], size))
            labels[i, :len(lab)] = lab
    return {"image": batch, "boxes": jnp.asarray(boxes), "labels": jnp.asarray(labels),
            "count": jnp.asarray([len(lab) for _, lab in tg], jnp.int32), "size": jnp.asarray(sizes, jnp.int32)}


def detection_losses(task: Detection, variables, images, targets, *, bn: str = "frozen", rng=None) -> dict:
    """``archc.losses`` for a detector (see runtime/tasks.py's ``losses``)."""
    return _loss_fn(task, bn == "batch")(variables, detection_batch(task, images, targets), rng)


@functools.lru_cache(maxsize=16)
def _loss_fn(task: Detection, train: bool):
    import jax
    forward = forward_fn(task, train=train)

    def run(variables, batch, rng):
        outputs, _ = forward(variables["params"], variables.get("batch_stats", {}), batch, rng)
        return task.losses(outputs, batch, rng)
    return jax.jit(run)
