"""``archc.detect``: images in, boxes out, under one ``jax.jit``.

A network's ``detect(kind=…)`` declaration (archc/detection/declare.py) picks a detector from
the registry (registry.py); the detector turns the network's raw outputs into fixed-size padded
detections plus a count per image (static shapes, batched), in the pixels of the transformed
input; ``detect`` then maps them back to each original image.

    model = archc.load("ssd300_vgg16", classes=91)
    dets = archc.detect(model, variables, [image], score_thresh=0.3)
    dets[0]["boxes"], dets[0]["scores"], dets[0]["labels"], dets[0]["names"]

For users who run the network themselves, ``Detector.postprocess(outputs, image_sizes,
input_size)`` takes the head outputs by node name (``detector_for(model).heads``)."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..compiler.declarations import DeclarationError
from .declare import class_names
from .detector import DetectError, Detector
from .images import as_images
from .postprocess import Detections
from .registry import KINDS, detector, detector_class
from .transform import rescale_boxes, transform


def detector_for(model, **overrides) -> Detector:
    """The detector that a model's ``detect(...)`` declaration describes, with ``overrides``
    (score_thresh, nms_thresh, topk_candidates, detections_per_img, min_size) applied."""
    decl = model.graph.declarations.get("detect")
    if decl is None:
        raise DetectError(f"{model.name}: the network declares no detect(...): it is not a detector "
                          "(see docs/detection.md)")
    try:
        decl = decl.with_settings(**overrides)
    except DeclarationError as e:
        raise DetectError(str(e)) from None
    return _detector(model, decl)


@functools.lru_cache(maxsize=32)
def _detector(model, decl) -> Detector:
    cls = detector_class(decl.kind)
    if cls is None:                 # a Detect made by hand: bind accepts only the registered kinds
        raise DetectError(f"{model.name}: no detector {decl.kind!r} is installed; known: {', '.join(sorted(KINDS))}")
    return cls(model, decl)


def detect_padded(det: Detector, variables, images: Sequence) -> Detections:
    """The whole pipeline under one jit: transform, network, post-processing, boxes back in each
    original image's pixels. ``images``: (H, W, 3) float arrays in [0, 1]."""
    return _pipeline(det)(variables, tuple(jnp.asarray(im) for im in images))


@functools.lru_cache(maxsize=32)
def _pipeline(det: Detector):
    def run(variables, images):
        batch, sizes = transform(images, det.transform_spec)
        sizes = jnp.asarray(sizes, jnp.int32)
        out = det.run(variables, batch, sizes)
        original = jnp.asarray([im.shape[:2] for im in images], jnp.int32)
        return dataclasses.replace(out, boxes=rescale_boxes(out.boxes, sizes, original))
    return jax.jit(run)


def _weights_classes(model, variables) -> int | None:
    """The class count that variables of the wrong size were made for, when only that differs."""
    from ..runtime.weights import class_count_from_shapes
    pairs = []
    for v in model.variable_specs:
        try:
            have = tuple(variables[v.collection][v.node][v.leaf].shape)
        except (KeyError, TypeError):
            return None
        if have != tuple(v.shape):
            pairs.append((have, v.shape))
    return class_count_from_shapes(model, pairs)


def _recorded_names(path) -> tuple | None:
    """The label names a detector's weights file records (``archc train``: its data's category
    names, label 1 first), with the background at 0."""
    from ..runtime.record import read_record, recorded_classes, recorded_task
    meta = read_record(path)
    names = recorded_classes(meta)
    return ("__background__", *names) if names and recorded_task(meta) == "detection" else None


def detect(model, variables, images, *, names: Sequence[str] | None = None, **thresholds) -> list[dict]:
    """Detect objects. ``images``: paths, PIL images, or (H, W, 3) arrays (uint8, or floats in
    [0, 1]), one or a list; ``variables``: a variables dict or a file written by ``archc
    import``; ``thresholds`` override the network's ``detect(...)`` settings for this call.
    Returns per image ``{"boxes": (N, 4) float32 xyxy in the image's pixels, "scores": (N,),
    "labels": (N,) int, "names": [N class names]}``, by descending score. ``names``: the name
    of each label (0: the background); default: those the weights file records (``archc
    train``), else the network's ``detect(names=…)``. Under
    ``jax.enable_x64(True)``, float64 images and variables run the pipeline in float64 (boxes and
    scores float64 too)."""
    from ..runtime.predict import PredictError, check_variables
    if isinstance(variables, (str, Path)):
        from ..runtime.variables_io import load_variables
        if names is None and Path(variables).is_file():
            names = _recorded_names(variables)
        if not Path(variables).is_file():
            raise DetectError(f"{variables}: no such weights file")
        if Path(variables).suffix.lower() in (".pth", ".pt", ".bin", ".h5", ".npz"):
            raise DetectError(f"{variables}: a checkpoint, not archc variables: convert it first with "
                              f"`archc import {model.name} {variables} --from torchvision|timm|keras --out weights.safetensors`")
        try:
            variables = load_variables(variables)
        except Exception as e:
            raise DetectError(f"{variables}: not a variables file written by archc ({e})") from None
    try:
        check_variables(model, variables)
    except PredictError as e:
        k = _weights_classes(model, variables)
        hint = (f"these weights have {k} classes: load the network with archc.load({model.name!r}, classes={k}) "
                f"(--param classes={k})" if k else "a detector's class count is a parameter: load the network "
                "with the checkpoint's (archc.load(…, classes=N), --param classes=N)")
        raise DetectError(f"{e}; {hint}") from None
    det = detector_for(model, **thresholds)
    names = tuple(names) if names is not None else det.names
    ims = as_images(images)
    out = jax.device_get(detect_padded(det, variables, ims))
    results = []
    for i in range(len(ims)):
        n = int(out.count[i])
        labels = np.asarray(out.labels[i, :n], np.int64)
        wide = np.float64 if out.boxes.dtype == np.float64 else np.float32
        results.append({"boxes": np.asarray(out.boxes[i, :n], wide),
                        "scores": np.asarray(out.scores[i, :n], wide), "labels": labels,
                        "names": [names[c] if c < len(names) else f"class {c}" for c in labels]})
    return results


__all__ = ["detect", "detect_padded", "detector", "detector_for", "Detector", "Detections", "DetectError",
           "class_names"]
