"""The detection task's data and validation for ``archc train`` (runtime/tasks.py's data
interface): COCO JSON or VOC data in, per-example dicts of fixed shape out (data.py), COCO AP
with pycocotools as the validation metric (evaluate.py), torchvision's recipe (recipe.py).

    archc train small.arch --data shapes/train.json --val shapes/val.json --out runs/small

The task is archc/detection/task.py's ``Detection``; this mixin is its data side."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.data import DataError
from .evaluate import METRICS

AUGMENT = ("auto", "hflip", "ssd", "none")      # auto: torchvision's default recipe, hflip


@dataclass(frozen=True)
class DetectionAugmentation:
    """The training augmentation (augment.py's recipes); ``flip``/``crop_scale`` as the
    Trainer's config keeps them."""
    recipe: str

    @property
    def flip(self) -> bool:
        return self.recipe in ("hflip", "ssd")

    crop_scale = None

    def describe(self) -> str:
        from .augment import recipe
        return f"{self.recipe}: {recipe(self.recipe).describe()}"


class DetectionDataMixin:
    """read_data / read_eval_data / check_data / augmentation / transform / validate for a
    detector (see runtime/tasks.py's data table)."""

    def init_data_side(self) -> None:
        """After the task's own set-up: COCO AP is the validation score (the best checkpoint's),
        its AP/AR metrics join the validation metrics."""
        self.score_name = self.score_label = "AP"
        self.val_metrics = tuple(self.val_metrics) + METRICS
        self.max_boxes, self.category_ids = 1, None

    def head_nodes(self, param_nodes) -> list[str]:
        """The predictor: the layers of the heads detect(...) names (re-initialised for a new
        class count, trained under --freeze-all-but-head)."""
        heads = tuple(self.detector.decl.scores) + tuple(self.detector.decl.boxes)
        return [p for p in param_nodes if any(p == h or p.startswith(h + ".") for h in heads)]

    def read_data(self, root, *, val_split=None, seed=0):
        """``--data``: a COCO JSON file (the validation set comes with ``--val``), or a VOC folder
        (its train split, and its val split when there is one)."""
        from .data import load_detection_data
        from .voc import is_voc, read_voc
        if val_split is not None:
            raise DataError("--val-split is for image folders; a detector's validation set is --val FILE.json "
                            "(or a VOC folder's val split)")
        train = load_detection_data(root, split="train", on_bad="skip")
        val = None
        if Path(root).is_dir() and is_voc(root):
            try:
                val = read_voc(root, "val", on_bad="skip")
            except DataError:
                val = None
        return train, val

    def read_eval_data(self, root):
        from .data import load_detection_data
        return load_detection_data(root, split="val", on_bad="skip")

    def check_data(self, data, on_bad="stop", log=None):
        """Bad boxes, categories and images found while reading: stop naming them, or skip
        those images (reported). Also sizes the batch's box count N."""
        from .coco import check_problems
        from .data import most_boxes
        check_problems(data, on_bad, log)
        self.max_boxes = max(self.max_boxes, most_boxes(data))
        first = self.category_ids
        if first is None:                       # the training set's, checked first
            self.category_ids = list(data.category_ids)
        elif list(data.category_ids) != first:
            raise DataError(f"{data.source}: its category ids {data.category_ids[:8]} differ from the training "
                            f"set's {first[:8]}")
        return data

    def record(self) -> dict:
        """What the weights record: the task, the category names and their COCO ids."""
        return {"task": self.name, "classes": self.classes, "category_ids": self.category_ids}

    def augmentation(self, recipe, shape, crop_scale=None, flip=None):
        from .augment import RECIPES
        if crop_scale is not None:
            raise DataError("--crop-scale is for classification; a detector's crops are --augment ssd's")
        chosen = "hflip" if recipe == "auto" else recipe
        if chosen not in RECIPES:
            raise DataError(f"a detector's augmentation is one of {', '.join(AUGMENT)}, not {recipe!r}")
        if flip is False and chosen == "hflip":
            chosen = "none"
        return DetectionAugmentation(chosen)

    def transform(self, shape, pipeline, augmentation=None):
        """The network's own input transform (detect_input) to its input size, boxes moved with
        the image, padded to the most boxes of an image (data.py)."""
        from .augment import recipe
        from .data import DetectionTransform
        aug = None if augmentation is None or augmentation.recipe == "none" else recipe(augmentation.recipe)
        return DetectionTransform(self.detector.transform_spec, tuple(shape[:2]), self.max_boxes, aug)

    def validate(self, variables, data) -> dict:
        """COCO AP and AR of ``variables`` on ``data`` (pycocotools; the numbers ``archc
        evaluate`` gives)."""
        from .evaluate import evaluate_detector
        import jax
        m = evaluate_detector(self.model, jax.device_get(variables), data, category_ids=self.category_ids)
        return {k: m[k] for k in METRICS}


__all__ = ["DetectionDataMixin", "DetectionAugmentation", "AUGMENT"]
