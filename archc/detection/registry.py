"""The one registry of detector kinds (JAX-free): ``detect(kind=…)``'s choices and, for each,
the ``Detector`` subclass that turns the network's outputs into boxes and the loss that trains
it (each imported when first asked for, so that declaring a detector never imports JAX).

A built-in kind is a line of ``KINDS``; a detector of one's own registers with
``@detector("kind", loss=…)``."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass
class Kind:
    detector: str | type            # the Detector subclass, or "module:Class" until first used
    loss: str | type | None = None  # its training loss (detection/task.py), None: it does not train


KINDS: dict[str, Kind] = {
    "ssd": Kind("archc.detection.ssd:SSDDetector", "archc.detection.ssd_loss:SSDLoss"),
    "yolo_v1": Kind("archc.detection.yolo:YoloV1Detector", "archc.detection.yolo_loss:YoloV1Loss"),
    "faster_rcnn": Kind("archc.detection.faster_rcnn:FasterRCNNDetector", "archc.detection.rcnn_loss:FasterRCNNLoss"),
}


def detector_kinds() -> tuple:
    """The kinds ``detect(kind=…)`` accepts, in registration order."""
    return tuple(KINDS)


def training_kinds() -> tuple:
    """The kinds that have a training loss."""
    return tuple(k for k, v in KINDS.items() if v.loss is not None)


def detector(kind: str, loss: type | None = None) -> Callable[[type], type]:
    """Register a Detector subclass as the post-processing of ``detect(kind=…)`` (and ``loss``,
    a class taking the detector, as its training loss)."""
    def deco(cls):
        if kind in KINDS:
            raise ValueError(f"detector {kind!r} is registered twice")
        cls.kind = kind
        KINDS[kind] = Kind(cls, loss)
        return cls
    return deco


def _load(where):
    if not isinstance(where, str):
        return where
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def detector_class(kind: str) -> type | None:
    """The Detector subclass of ``kind`` (importing a built-in's module), None when unknown."""
    k = KINDS.get(kind)
    if k is None:
        return None
    if isinstance(k.detector, str):
        k.detector = _load(k.detector)
        k.detector.kind = kind
    return k.detector


def loss_class(kind: str) -> type | None:
    """The training loss of ``kind`` (importing its module), None when it has none."""
    k = KINDS.get(kind)
    if k is None or k.loss is None:
        return None
    k.loss = _load(k.loss)
    return k.loss
