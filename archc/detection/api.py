"""``archc.detect``: images in, boxes out, under one ``jax.jit``.

A network's ``detect(kind=…)`` declaration (archc/detection/declare.py) picks a detector from
the registry here (``@detector("ssd")``); the detector turns the network's raw outputs into
fixed-size padded detections plus a count per image (static shapes, batched), in the pixels of
the transformed input; ``detect`` then maps them back to each original image.

    model = archc.load("ssd300_vgg16", classes=91)
    dets = archc.detect(model, variables, [image], score_thresh=0.3)
    dets[0]["boxes"], dets[0]["scores"], dets[0]["labels"], dets[0]["names"]

For users who run the network themselves, ``Detector.postprocess(outputs, image_sizes,
input_size)`` takes the head outputs by node name (``detector_for(model).heads``)."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import anchors as anchor_lib
from . import boxes as B
from .declare import Detect
from .transforms import rescale_boxes, transform

DETECTORS: dict[str, type] = {}
# Detector kinds registered in modules of their own, imported when a network first asks for them.
DETECTOR_MODULES = {"faster_rcnn": "archc.detection.rcnn"}
DATA = Path(__file__).resolve().parent.parent / "data"
NAME_FILES = {"coco": "coco_91_classes.txt", "voc": "voc_21_classes.txt"}


class DetectError(ValueError):
    """A user-facing problem with a detection request (printed without a traceback)."""


def detector(kind: str) -> Callable[[type], type]:
    """Register a Detector subclass as the post-processing of ``detect(kind=…)``."""
    def deco(cls):
        if kind in DETECTORS:
            raise ValueError(f"detector {kind!r} is registered twice")
        cls.kind = kind
        DETECTORS[kind] = cls
        return cls
    return deco


@functools.lru_cache(maxsize=None)
def class_names(which: str) -> tuple:
    """COCO's 91-index names (with '__background__' and 'N/A' gaps, torchvision's order) or
    VOC's 21 (background first); () for 'none'."""
    f = NAME_FILES.get(which)
    return tuple(DATA.joinpath(f).read_text(encoding="utf-8").splitlines()) if f else ()


@dataclass(frozen=True)
class Detections:
    """Padded detections of a batch: boxes (B, D, 4) xyxy, scores (B, D), labels (B, D)
    int32, count (B,); entries from ``count`` on are padding (boxes and scores 0, labels -1)."""
    boxes: jax.Array
    scores: jax.Array
    labels: jax.Array
    count: jax.Array


jax.tree_util.register_dataclass(Detections, data_fields=["boxes", "scores", "labels", "count"], meta_fields=[])


def _pad_invalid(boxes, scores, labels, valid):
    count = valid.sum(-1).astype(jnp.int32)
    return Detections(jnp.where(valid[..., None], boxes, 0.0), jnp.where(valid, scores, 0.0),
                      jnp.where(valid, labels, -1).astype(jnp.int32), count)


def _flatten_head(y, per_cell: int):
    """(B, H, W, A·K) -> (B, H·W·A, K): rows (y, x, anchor), as torchvision's heads
    ``view(N, A, K, H, W).permute(0, 3, 4, 1, 2)``."""
    b, h, w, c = y.shape
    return y.reshape(b, h * w * (c // per_cell), per_cell)


class Detector:
    """A network's post-processing, from its declarations. Subclasses set ``heads`` (the node
    names the network must output) and implement ``postprocess``; a detector whose network
    runs in stages (Faster R-CNN) overrides ``run``."""
    kind = "?"

    def __init__(self, model, decl: Detect):
        self.model, self.decl, self.graph = model, decl, model.graph
        d = self.graph.declarations.get("detect_input")
        if d is None:
            raise DetectError(f"{model.name}: the network declares no detect_input(...) (its input transform)")
        self.transform_spec = d
        self.names = class_names(decl.names)
        self.heads = tuple(decl.scores) + tuple(decl.boxes)

    def need(self, kind: str):
        d = self.graph.declarations.get(kind)
        if d is None:
            raise DetectError(f"{self.model.name}: detect(kind={self.kind!r}) needs a {kind}(...) declaration")
        return d

    def run(self, variables, batch, image_sizes) -> Detections:
        """The network and the post-processing on a transformed batch (NHWC) whose images have
        the (unpadded) sizes ``image_sizes`` (B, 2) int32."""
        outs = self.model.apply_fn(variables, batch, outputs=self.heads)
        return self.postprocess(outs, image_sizes, tuple(batch.shape[1:3]))

    def postprocess(self, outputs: Mapping, image_sizes, input_size: tuple) -> Detections:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# SSD (torchvision SSD.postprocess_detections)
# ---------------------------------------------------------------------------------------------
@detector("ssd")
class SSDDetector(Detector):
    def __init__(self, model, decl):
        super().__init__(model, decl)
        self.default_boxes = self.need("default_boxes")
        if not decl.boxes:
            raise DetectError(f"{model.name}: detect(kind='ssd') needs boxes=[…] (the box-code heads)")
        if len(decl.scores) != len(self.default_boxes.aspect_ratios):
            raise DetectError(f"{model.name}: {len(decl.scores)} heads but default_boxes has "
                              f"{len(self.default_boxes.aspect_ratios)} levels")
        self.per_location = self.default_boxes.per_location()
        for n, a in zip(decl.boxes, self.per_location):
            if self.graph.nodes[n].shape[-1] != 4 * a:
                raise DetectError(f"{model.name}: head {n} has {self.graph.nodes[n].shape[-1]} channels, "
                                  f"{a} default boxes per location need {4 * a}")
        self.classes = self.graph.nodes[decl.scores[0]].shape[-1] // self.per_location[0]
        for n, a in zip(decl.scores, self.per_location):
            if self.graph.nodes[n].shape[-1] != a * self.classes:
                raise DetectError(f"{model.name}: head {n} has {self.graph.nodes[n].shape[-1]} channels, "
                                  f"{a} default boxes per location × {self.classes} classes need {a * self.classes}")

    def anchors(self, grid_sizes, input_size, dtype=np.float32):
        d = self.default_boxes
        return anchor_lib.default_boxes(grid_sizes, input_size, d.aspect_ratios, d.scales or None,
                                        d.steps or None, d.clip, d.min_ratio, d.max_ratio, dtype=dtype)

    def postprocess(self, outputs, image_sizes, input_size):
        d = self.decl
        logits = jnp.concatenate([_flatten_head(outputs[n], self.classes) for n in d.scores], 1)
        codes = jnp.concatenate([_flatten_head(outputs[n], 4) for n in d.boxes], 1)
        grids = [tuple(outputs[n].shape[1:3]) for n in d.scores]
        anchors = jnp.asarray(self.anchors(grids, input_size, np.dtype(codes.dtype).type))
        return jax.vmap(functools.partial(self._one_image, anchors))(logits, codes, image_sizes)

    def _one_image(self, anchors, logits, codes, size):
        d = self.decl
        scores = jax.nn.softmax(logits, axis=-1)
        boxes = B.clip(B.decode(codes, anchors, d.box_weights, d.box_clamp), size[0], size[1])
        n = boxes.shape[0]
        k = min(d.topk_candidates, n)
        fg = scores[:, 1:].T                                            # (C - 1, N), class-major
        keep = fg > fg.dtype.type(d.score_thresh)
        if d.min_size > 0:
            keep = keep & B.remove_small(boxes, jnp.ones(n, bool), d.min_size)[None]
        # torchvision's batched_nms over all candidates never crosses classes: one NMS per class,
        # on the boxes it sees (offset by the coordinate trick when it takes that path)
        box, score, row, ok = per_class_nms(boxes, fg, keep, k, d.nms_thresh, d.detections_per_img, trick=True)
        return _pad_invalid(box, score, row + 1, ok)


def per_class_nms(boxes, scores, keep, k: int, nms_thresh: float, max_det: int, trick: bool = False):
    """Per class (row of ``scores`` (C, N) over ``boxes`` (N, 4), ``keep`` the candidates): the
    best ``k`` candidates, NMS among them, then the best ``max_det`` kept pairs of all classes.
    Returns boxes (max_det, 4), scores, class rows (int32) and a valid mask, by descending score
    (ties: the lower class, then the lower index). ``trick``: the IoUs are those of the boxes
    offset as torchvision's batched_nms offsets them on its coordinate-trick path."""
    top, idx = jax.lax.top_k(jnp.where(keep, scores, -jnp.inf), k)
    valid = jnp.take_along_axis(keep, idx, 1)
    cand = boxes[idx]                                                   # (C, k, 4)
    rows = jnp.broadcast_to(jnp.arange(scores.shape[0], dtype=jnp.int32)[:, None], valid.shape)
    seen = cand + B.coordinate_offsets(cand, rows + 1, valid, valid.sum()) if trick else cand
    kept = jax.vmap(lambda bx, sc, v: B.nms_keep(bx, sc, v, nms_thresh))(seen, top, valid)
    flat = jnp.where(kept, top, -jnp.inf).reshape(-1)
    best, pos = jax.lax.top_k(flat, min(max_det, flat.shape[0]))
    return cand.reshape(-1, 4)[pos], best, rows.reshape(-1)[pos], best > -jnp.inf


# ---------------------------------------------------------------------------------------------
# YOLO v1 (Redmon et al. 2016, Sec. 2: class-specific confidence, threshold, per-class NMS)
# ---------------------------------------------------------------------------------------------
@detector("yolo_v1")
class YoloV1Detector(Detector):
    """Cell (row r, col c) box b: centre ((x + c) / S · W, (y + r) / S · H), size
    (w² · W, h² · H) (w, h when sqrt is false); its score for class k is Pr(k | object) ·
    confidence. (box, class) pairs scoring above ``score_thresh`` (the best ``topk_candidates``
    of each class) go through NMS per class (IoU above ``nms_thresh`` suppresses, on the
    unclipped boxes), then boxes are clipped to the image. Labels are 1-based (0 is the
    background, as torchvision's)."""

    def __init__(self, model, decl):
        super().__init__(model, decl)
        self.grid = self.need("yolo_grid")
        g = self.grid
        shape = tuple(self.graph.nodes[decl.scores[0]].shape)
        if shape != (g.side, g.side, 5 * g.boxes + g.classes):
            raise DetectError(f"{model.name}: yolo_grid(side={g.side}, boxes={g.boxes}, classes={g.classes}) "
                              f"needs an output of {g.side}x{g.side}x{5 * g.boxes + g.classes}, "
                              f"{decl.scores[0]} is {'x'.join(map(str, shape))}")
        self.heads = tuple(decl.scores)

    def decode(self, y, input_size):
        """(B, S, S, 5B + C) -> boxes (B, S·S·B, 4) xyxy in pixels, scores (B, S·S·B, C)."""
        g = self.grid
        s, nb = g.side, g.boxes
        h, w = input_size
        bx = y[..., :5 * nb].reshape(y.shape[0], s, s, nb, 5)
        probs = y[..., 5 * nb:]
        col = jnp.arange(s, dtype=y.dtype)[None, None, :, None]
        row = jnp.arange(s, dtype=y.dtype)[None, :, None, None]
        cx = (bx[..., 0] + col) / s * w
        cy = (bx[..., 1] + row) / s * h
        bw, bh = (bx[..., 2] ** 2, bx[..., 3] ** 2) if g.sqrt else (bx[..., 2], bx[..., 3])
        bw, bh = bw * w, bh * h
        boxes = jnp.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        scores = probs[:, :, :, None, :] * bx[..., 4:5]                  # (B, S, S, nb, C)
        n = s * s * nb
        return boxes.reshape(-1, n, 4), scores.reshape(-1, n, g.classes)

    def postprocess(self, outputs, image_sizes, input_size):
        boxes, scores = self.decode(outputs[self.decl.scores[0]], input_size)
        return jax.vmap(self._one_image)(boxes, scores, image_sizes)

    def _one_image(self, boxes, scores, size):
        d = self.decl
        n, c = scores.shape
        cls = scores.T                                                   # (C, n)
        keep = cls > cls.dtype.type(d.score_thresh)
        box, score, row, ok = per_class_nms(boxes, cls, keep, min(d.topk_candidates, n), d.nms_thresh,
                                            d.detections_per_img)
        return _pad_invalid(B.clip(box, size[0], size[1]), score, row + 1, ok)


# ---------------------------------------------------------------------------------------------
# archc.detect
# ---------------------------------------------------------------------------------------------
_THRESHOLDS = ("score_thresh", "nms_thresh", "topk_candidates", "detections_per_img", "min_size")


def detector_for(model, **overrides) -> Detector:
    """The detector that a model's ``detect(...)`` declaration describes, with ``overrides``
    (score_thresh, nms_thresh, topk_candidates, detections_per_img, min_size) applied."""
    decl = model.graph.declarations.get("detect")
    if decl is None:
        raise DetectError(f"{model.name}: the network declares no detect(...): it is not a detector "
                          "(see docs/detection.md)")
    unknown = sorted(set(overrides) - set(_THRESHOLDS))
    if unknown:
        raise DetectError(f"unknown detection setting(s) {', '.join(unknown)}; the settings are "
                          + ", ".join(_THRESHOLDS))
    for k, v in overrides.items():
        integer = k in ("topk_candidates", "detections_per_img")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and (int(v) != v or v < 1)) or v < 0:
            raise DetectError(f"{k} must be {'a positive integer' if integer else 'a number >= 0'}, not {v!r}")
        if k in ("score_thresh", "nms_thresh") and v > 1:
            raise DetectError(f"{k} must be in [0, 1], not {v!r}")
        overrides[k] = int(v) if integer else float(v)
    decl = dataclasses.replace(decl, **overrides)
    return _detector(model, decl)


@functools.lru_cache(maxsize=32)
def _detector(model, decl) -> Detector:
    if decl.kind not in DETECTORS and decl.kind in DETECTOR_MODULES:
        import importlib
        importlib.import_module(DETECTOR_MODULES[decl.kind])
    if decl.kind not in DETECTORS:
        raise DetectError(f"{model.name}: no detector {decl.kind!r} is installed; known: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[decl.kind](model, decl)


def _as_image(im, i: int) -> np.ndarray:
    """An (H, W, 3) float32 image in [0, 1] from a path, PIL image or array (uint8 0-255 or
    float 0-1)."""
    if isinstance(im, (str, Path)):
        from ..runtime.predict import PredictError, load_image
        try:
            im = load_image(im)
        except PredictError as e:
            raise DetectError(str(e)) from None
    if hasattr(im, "convert") and hasattr(im, "size"):
        im = np.asarray(im.convert("RGB"))
    a = np.asarray(im)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.ndim != 3 or a.shape[-1] not in (1, 3) or 0 in a.shape:
        raise DetectError(f"image {i}: expected (height, width, 3), got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255)
    if not np.issubdtype(a.dtype, np.floating):
        raise DetectError(f"image {i}: uint8 (0-255) or float (0-1) pixels, not {a.dtype}")
    # float64 images stay float64 where JAX computes in it (jax.enable_x64): the whole pipeline
    # then runs in double, as torchvision's model.double() does
    a = a.astype(np.float64 if a.dtype == np.float64 and jax.config.jax_enable_x64 else np.float32)
    if not np.isfinite(a).all():
        raise DetectError(f"image {i}: has NaN or infinite pixels")
    return a


def _images(images) -> list:
    if isinstance(images, (str, Path)) or hasattr(images, "convert"):
        images = [images]
    elif isinstance(images, np.ndarray) or isinstance(images, jax.Array):
        images = [images] if images.ndim in (2, 3) else list(images)
    images = list(images)
    if not images:
        raise DetectError("no images given")
    return [_as_image(im, i) for i, im in enumerate(images)]


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
    ims = _images(images)
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


__all__ = ["detect", "detector", "detector_for", "Detector", "Detections", "DetectError", "class_names", "DETECTORS"]
