"""Detection data sets for training and evaluation: a COCO JSON file or a Pascal VOC folder
(archc/detection/coco.py, voc.py), and the per-example dicts of fixed shape that a detector
trains on (the network's own input transform, boxes moved with the image, padded to a count)."""
from __future__ import annotations

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


class DetectionExamples:
    """Per-example dicts of fixed shape for training a detector on ``data``::

        {"image": (H, W, 3) float32, the detector's transform of the (augmented) image, padded
                  to the network's input H x W,
         "boxes": (N, 4) float32 xyxy in those pixels, "labels": (N,) int32 (1..K; 0 pads),
         "count": () int32, the real boxes first, "image_size": (2,) int32, the resized image
                  (unpadded) as torchvision's image_sizes}

    N is ``max_boxes`` (default: the most boxes of any image; augmentation only drops boxes).
    ``augment``: a Compose from archc/detection/augment.py, applied (with the Generator given
    to ``example``) to the image in [0, 1] before the transform, as torchvision's references
    apply theirs before the model's. ``iscrowd`` boxes are left out."""

    def __init__(self, data: DetectionData, spec, canvas: tuple[int, int], *, augment=None,
                 max_boxes: int | None = None):
        self.data, self.spec, self.canvas, self.augment = data, spec, tuple(canvas), augment
        most = max((len(data.targets(i)["boxes"]) for i in range(len(data))), default=0)
        self.max_boxes = max(1, most if max_boxes is None else max_boxes)
        if max_boxes is not None and most > max_boxes:
            raise DataError(f"{data.source}: an image has {most} boxes, more than max_boxes={max_boxes}")

    def __len__(self) -> int:
        return len(self.data)

    def example(self, i: int, rng=None) -> dict:
        from .transforms import training_example
        t = self.data.targets(i)
        sample = {"image": self.data.read(i).astype(np.float32) / np.float32(255), **t}
        if self.augment is not None and rng is not None:
            sample = self.augment(sample, rng)
        try:
            image, boxes, size = training_example(sample["image"], sample["boxes"], self.spec, self.canvas)
        except ValueError as e:
            raise DataError(f"{self.data.examples[i]['path']}: {e}") from None
        n = len(boxes)
        padded = np.zeros((self.max_boxes, 4), np.float32)
        labels = np.zeros(self.max_boxes, np.int32)
        padded[:n], labels[:n] = boxes, sample["labels"]
        return {"image": image, "boxes": padded, "labels": labels, "count": np.int32(n),
                "image_size": np.asarray(size, np.int32)}


def collate(examples: list[dict]) -> dict:
    """Stack per-example dicts into a batch."""
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}
