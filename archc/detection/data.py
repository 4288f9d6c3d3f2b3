"""Detection data sets for training and evaluation: a COCO JSON file or a Pascal VOC folder
(archc/detection/coco.py, voc.py), and the per-example dicts of fixed shape that a detector
trains on (the network's own input transform, boxes moved with the image, padded to a count)."""
from __future__ import annotations

from pathlib import Path

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
