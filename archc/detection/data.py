"""Detection data sets for training and evaluation: a COCO JSON file or a Pascal VOC folder
(archc/detection/coco.py, voc.py), and the per-example dicts of fixed shape that a detector
trains on (the network's own input transform, boxes moved with the image, padded to a count)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.data import DataError
from .coco import DetectionData, read_coco
from .voc import is_voc, read_voc


def load_detection_data(path, *, split: str = "train", on_bad: str = "stop", log=None) -> DetectionData:
    """``path``: a COCO JSON file, or a VOC folder (its ImageSets/Main/``split``.txt)."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".json":
        return read_coco(p, on_bad=on_bad, log=log)
    if p.is_dir() and is_voc(p):
        return read_voc(p, split, on_bad=on_bad, log=log)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    raise DataError(f"{p}: detection data is a COCO JSON file (annotations.json) or a Pascal VOC folder "
                    "(Annotations/, JPEGImages/, ImageSets/Main/)")


def most_boxes(data: DetectionData) -> int:
    """The most (non-crowd) boxes of any image of ``data``, at least 1: the N of the batch."""
    return max([1] + [len(data.targets(i)["boxes"]) for i in range(len(data))])


@dataclass(frozen=True)
class DetectionTransform:
    """One example (``DetectionData.example``: ``{"image": (H, W, 3) uint8, "boxes", "labels"}``)
    as fixed-shape arrays::

        {"image": (H, W, 3) float32, the detector's transform of the (augmented) image, padded
                  to the network's input H x W (``canvas``),
         "boxes": (N, 4) float32 xyxy in those pixels, "labels": (N,) int32 (1..K; 0 pads),
         "count": () int32, the real boxes first, "size": (2,) int32, the resized image
                  (unpadded), torchvision's image_sizes}

    ``augment``: a Compose from archc/detection/augment.py, applied (with the Generator given)
    to the image in [0, 1] before the detector's transform, as torchvision's references apply
    theirs before the model's; without ``rng`` (evaluation) nothing is augmented."""
    spec: object                    # the network's DetectInput
    canvas: tuple
    max_boxes: int
    augment: object = None

    def __call__(self, example: dict, rng=None) -> dict:
        from .transform import training_example
        sample = {"image": np.asarray(example["image"], np.float32) / np.float32(255),
                  "boxes": example["boxes"], "labels": example["labels"]}
        if self.augment is not None and rng is not None:
            sample = self.augment(sample, rng)
        try:
            image, boxes, size = training_example(sample["image"], sample["boxes"], self.spec, self.canvas)
        except ValueError as e:
            raise DataError(f"{example.get('path', 'an image')}: {e}") from None
        n = len(boxes)
        if n > self.max_boxes:
            raise DataError(f"{example.get('path', 'an image')}: {n} boxes, more than the {self.max_boxes} a batch holds")
        padded = np.zeros((self.max_boxes, 4), np.float32)
        labels = np.zeros(self.max_boxes, np.int32)
        padded[:n], labels[:n] = boxes, sample["labels"]
        return {"image": image, "boxes": padded, "labels": labels, "count": np.int32(n),
                "size": np.asarray(size, np.int32)}


def collate(examples: list[dict]) -> dict:
    """Stack per-example dicts into a batch."""
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
