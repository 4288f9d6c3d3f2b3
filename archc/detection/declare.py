"""The detection description: declarations (compiler/declarations.py) that state, as data in
the ``.arch`` file, how a network's outputs become boxes. JAX-free, like the op registry.

    detect_input(mean=[…], std=[…], fixed_size=[300, 300], size_divisible=1)   # the transform
    default_boxes(aspect_ratios=[[2], [2, 3], …], scales=[…], steps=[…])       # SSD's boxes
    anchors(sizes=[[32], [64], …], aspect_ratios=[[0.5, 1, 2], …])              # Faster R-CNN's
    rpn(scores=[@rpn_cls0, …], boxes=[@rpn_box0, …], proposals=@rois)           # its proposals
    detect(kind="ssd", scores=[@cls1, …], boxes=[@box1, …], box_weights=[10, 10, 5, 5],
           score_thresh=0.01, nms_thresh=0.45, topk_candidates=400, detections_per_img=200,
           names="coco")

Values are expressions of the value language, so ``param``s and presets set them and
``archc.load("ssd300_vgg16", score_thresh=0.0)`` overrides them. ``detect``'s ``kind`` picks
the post-processing (archc/detection/registry.py); each kind says which other declarations it
needs. A new detector kind registers itself there and, where it needs settings of its own, adds
a declaration of its own here (``rpn(...)`` for Faster R-CNN)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..compiler.declarations import IMAGENET_MEAN, IMAGENET_STD, DeclarationContext, DeclarationError, declaration
from .registry import detector_kinds

DATA = Path(__file__).resolve().parent.parent / "data"
NAME_FILES = {"coco": "coco_91_classes.txt", "voc": "voc_21_classes.txt"}
CLASS_NAMES = (*NAME_FILES, "none")
# torchvision's BoxCoder clamps dw, dh at bbox_xform_clip before exp
BOX_CLAMP = math.log(1000.0 / 16)
# detect()'s post-processing settings that a call may override (archc.detect(…, score_thresh=…),
# --score-thresh): name -> (low, high, integer)
SETTINGS = {"score_thresh": (0, 1, False), "nms_thresh": (0, 1, False), "topk_candidates": (1, None, True),
            "detections_per_img": (1, None, True), "min_size": (0, None, False)}


@functools.lru_cache(maxsize=None)
def class_names(which: str) -> tuple:
    """COCO's 91-index names (with '__background__' and 'N/A' gaps, torchvision's order) or
    VOC's 21 (background first); () for 'none'."""
    f = NAME_FILES.get(which)
    return tuple(DATA.joinpath(f).read_text(encoding="utf-8").splitlines()) if f else ()


def _nested(ctx: DeclarationContext, name: str, v, levels: int | None = None) -> tuple:
    """A list of lists of numbers (one list per feature level)."""
    if not isinstance(v, (list, tuple)) or not v:
        ctx.fail(name, f"{ctx.kind}(): '{name}' must be a list with one list of numbers per level, not {v!r}")
    if levels is not None and len(v) != levels:
        ctx.fail(name, f"{ctx.kind}(): '{name}' needs {levels} levels, got {len(v)}")
    return tuple(ctx.numbers(name, x) for x in v)


def training_settings(ctx: DeclarationContext, v: dict) -> dict:
    """The matching and sampling settings (``detect``'s and ``rpn``'s), checked."""
    fg = float(ctx.number("fg_iou_thresh", v["fg_iou_thresh"], low=0, high=1))
    bg = float(ctx.number("bg_iou_thresh", v["bg_iou_thresh"], low=0, high=1))
    if bg > fg:
        ctx.fail("bg_iou_thresh", f"{ctx.kind}(): 'bg_iou_thresh' ({bg}) must not exceed 'fg_iou_thresh' ({fg})")
    return {"fg_iou_thresh": fg, "bg_iou_thresh": bg,
            "batch_size_per_image": ctx.number("batch_size_per_image", v["batch_size_per_image"], low=1, integer=True),
            "positive_fraction": float(ctx.number("positive_fraction", v["positive_fraction"], low=0, high=1))}


def _setting(ctx: DeclarationContext, name: str, v):
    low, high, integer = SETTINGS[name]
    x = ctx.number(name, v, low=low, high=high, integer=integer)
    return x if integer else float(x)


def _tensors(ctx: DeclarationContext, name: str, v) -> tuple:
    v = v if isinstance(v, (list, tuple)) else [v]
    return tuple(ctx.tensor(name, t) for t in v)


@declaration("detect_input")
@dataclass(frozen=True)
class DetectInput:
    """The detector's input transform (torchvision's GeneralizedRCNNTransform): images in
    [0, 1] are normalised by ``mean``/``std``, resized (to ``fixed_size`` [h, w] when given, else
    so that the short side is ``min_size`` and the long side at most ``max_size``; bilinear, no
    antialiasing) and zero-padded to a multiple of ``size_divisible``."""
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    min_size: int = 800
    max_size: int = 1333
    size_divisible: int = 32
    fixed_size: tuple | None = None

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "DetectInput":
        mean, std = ctx.numbers("mean", v["mean"], 3), ctx.numbers("std", v["std"], 3)
        if any(s <= 0 for s in std):
            ctx.fail("std", "detect_input(): 'std' must be positive")
        fixed = v["fixed_size"]
        if fixed is not None:
            fixed = ctx.numbers("fixed_size", fixed, 2)
            for s in fixed:
                ctx.number("fixed_size", s, low=1, integer=True)
        return cls(tuple(map(float, mean)), tuple(map(float, std)),
                   ctx.number("min_size", v["min_size"], low=1, integer=True),
                   ctx.number("max_size", v["max_size"], low=1, integer=True),
                   ctx.number("size_divisible", v["size_divisible"], low=1, integer=True), fixed)


@declaration("default_boxes")
@dataclass(frozen=True)
class DefaultBoxes:
    """SSD's default boxes (torchvision's DefaultBoxGenerator), one entry per head level:
    ``aspect_ratios`` (each gives 2 boxes besides the two square ones), ``scales`` (levels + 1
    numbers; when empty, spaced evenly from ``min_ratio`` to ``max_ratio``), ``steps`` (the pixel
    stride of each level's centres; when empty, the map size), ``clip`` the sizes to [0, 1]."""
    aspect_ratios: tuple
    scales: tuple = ()
    min_ratio: float = 0.15
    max_ratio: float = 0.9
    steps: tuple = ()
    clip: bool = True

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "DefaultBoxes":
        ratios = _nested(ctx, "aspect_ratios", v["aspect_ratios"])
        scales = ctx.numbers("scales", v["scales"])
        if scales and len(scales) != len(ratios) + 1:
            ctx.fail("scales", f"default_boxes(): {len(ratios)} levels need {len(ratios) + 1} scales, got {len(scales)}")
        steps = ctx.numbers("steps", v["steps"])
        if steps and len(steps) != len(ratios):
            ctx.fail("steps", f"default_boxes(): {len(ratios)} levels need {len(ratios)} steps, got {len(steps)}")
        if not isinstance(v["clip"], bool):
            ctx.fail("clip", f"default_boxes(): 'clip' is true or false, not {v['clip']!r}")
        return cls(ratios, tuple(map(float, scales)), float(ctx.number("min_ratio", v["min_ratio"], low=0)),
                   float(ctx.number("max_ratio", v["max_ratio"], low=0)), steps, v["clip"])

    def per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]


@declaration("anchors")
@dataclass(frozen=True)
class Anchors:
    """Grid anchors (torchvision's AnchorGenerator), one entry per feature level: ``sizes``
    (pixels) × ``aspect_ratios`` (h / w) anchors per location, at ``i · stride`` with the
    integer stride padded input // map size."""
    sizes: tuple
    aspect_ratios: tuple

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "Anchors":
        sizes = _nested(ctx, "sizes", v["sizes"])
        return cls(sizes, _nested(ctx, "aspect_ratios", v["aspect_ratios"], len(sizes)))

    def per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]


@declaration("detect")
@dataclass(frozen=True)
class Detect:
    """How outputs become detections. ``kind``: the post-processing (ssd, yolo_v1,
    faster_rcnn). ``scores``/``boxes``: the head tensors, one per level (SSD: class logits and
    box codes; YOLO: ``scores`` is the S×S×(5B+C) output). ``box_weights``/``box_clamp``: the box
    coder. Per class, candidates scoring more than ``score_thresh`` (the best
    ``topk_candidates``) go through NMS at ``nms_thresh`` (suppressing at IoU strictly above it);
    the best ``detections_per_img`` remain. Boxes with a side under ``min_size`` are dropped.
    ``names``: the class names (coco: the 91-index COCO list, voc: the 21 VOC classes).

    Training (archc/detection/ssd_loss.py, rcnn_loss.py): a prior (SSD's default box, Faster
    R-CNN's proposal) with IoU ≥ ``fg_iou_thresh`` with a ground-truth box is foreground, below
    ``bg_iou_thresh`` background, between ignored; Faster R-CNN samples ``batch_size_per_image``
    proposals per image, at most ``positive_fraction`` of them foreground; SSD keeps
    (1 - ``positive_fraction``) / ``positive_fraction`` hard negatives per foreground box."""
    kind: str
    scores: tuple
    boxes: tuple = ()
    box_weights: tuple = (1.0, 1.0, 1.0, 1.0)
    box_clamp: float = BOX_CLAMP
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    topk_candidates: int = 1000
    detections_per_img: int = 100
    min_size: float = 0.0
    names: str = "none"
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "Detect":
        ctx.choice("kind", v["kind"], detector_kinds())
        scores = _tensors(ctx, "scores", v["scores"])
        boxes = _tensors(ctx, "boxes", v["boxes"]) if v["boxes"] else ()
        if boxes and len(boxes) != len(scores):
            ctx.fail("boxes", f"detect(): {len(scores)} score tensors but {len(boxes)} box tensors")
        weights = ctx.numbers("box_weights", v["box_weights"], 4)
        if any(w <= 0 for w in weights):
            ctx.fail("box_weights", "detect(): 'box_weights' must be positive")
        return cls(v["kind"], scores, boxes, tuple(map(float, weights)),
                   float(ctx.number("box_clamp", v["box_clamp"])),
                   **{k: _setting(ctx, k, v[k]) for k in SETTINGS},
                   names=ctx.choice("names", v["names"], CLASS_NAMES), **training_settings(ctx, v))

    def with_settings(self, **settings) -> "Detect":
        """This description with post-processing ``settings`` (``SETTINGS``) replaced, as a call
        gives them (an integer setting may be a whole float); DeclarationError when one is unknown
        or out of range."""
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise DeclarationError(f"unknown detection setting(s) {', '.join(unknown)}; the settings are "
                                   + ", ".join(SETTINGS))
        for k, v in settings.items():
            low, high, integer = SETTINGS[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and int(v) != v) or v < low:
                raise DeclarationError(f"{k} must be {'a positive integer' if integer else 'a number >= 0'}, not {v!r}")
            if high is not None and v > high:
                raise DeclarationError(f"{k} must be in [{low}, {high}], not {v!r}")
            settings[k] = int(v) if integer else float(v)
        return replace(self, **settings)

    def tensors(self) -> tuple:
        return self.scores + self.boxes

    def renamed(self, redirect: dict) -> "Detect":
        return replace(self, scores=tuple(redirect.get(t, t) for t in self.scores),
                       boxes=tuple(redirect.get(t, t) for t in self.boxes))


@declaration("yolo_grid")
@dataclass(frozen=True)
class YoloGrid:
    """YOLO v1's output layout: an ``side``×``side`` grid, each cell holding ``boxes`` boxes
    (x, y, w, h, confidence: x, y the centre's offset in the cell, w, h relative to the image,
    predicted as their square roots when ``sqrt``) followed by ``classes`` class probabilities.
    Training (archc/detection/yolo_loss.py): the paper's sum-squared error with the coordinate
    terms weighted ``lambda_coord`` and the confidence of predictors without an object
    ``lambda_noobj``."""
    side: int = 7
    boxes: int = 2
    classes: int = 20
    sqrt: bool = True
    lambda_coord: float = 5.0
    lambda_noobj: float = 0.5

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "YoloGrid":
        if not isinstance(v["sqrt"], bool):
            ctx.fail("sqrt", f"yolo_grid(): 'sqrt' is true or false, not {v['sqrt']!r}")
        return cls(ctx.number("side", v["side"], low=1, integer=True), ctx.number("boxes", v["boxes"], low=1, integer=True),
                   ctx.number("classes", v["classes"], low=1, integer=True), v["sqrt"],
                   float(ctx.number("lambda_coord", v["lambda_coord"], low=0)),
                   float(ctx.number("lambda_noobj", v["lambda_noobj"], low=0)))


@declaration("rpn")
@dataclass(frozen=True)
class RPN:
    """Faster R-CNN's region proposal network.

        rpn(scores=[@rpn_cls0, …], boxes=[@rpn_box0, …], proposals=@rois, pre_nms_top_n=1000,
            post_nms_top_n=1000, nms_thresh=0.7, score_thresh=0.0, min_size=1e-3)

    ``scores``/``boxes``: the RPN head's objectness logits and box codes, one tensor per level (the
    levels of ``anchors(...)``); ``proposals``: the graph input that the box head pools (R =
    ``post_nms_top_n`` boxes per image). Per level the best ``pre_nms_top_n`` logits, decoded with
    weights (1, 1, 1, 1), clipped, those with a side under ``min_size`` or a probability under
    ``score_thresh`` dropped, NMS per level at ``nms_thresh``, the best ``post_nms_top_n`` kept
    (torchvision's RegionProposalNetwork.filter_proposals in eval mode).

    Training (archc/detection/rcnn_loss.py): ``pre_nms_top_n_train``/``post_nms_top_n_train`` replace
    the two top-n; an anchor with IoU ≥ ``fg_iou_thresh`` with a ground-truth box is foreground (and
    each box's best anchors, ties included), below ``bg_iou_thresh`` background; per image
    ``batch_size_per_image`` anchors are sampled, at most ``positive_fraction`` of them foreground
    (torchvision's rpn_* constructor arguments)."""
    scores: tuple
    boxes: tuple
    proposals: str
    pre_nms_top_n: int = 1000
    post_nms_top_n: int = 1000
    nms_thresh: float = 0.7
    score_thresh: float = 0.0
    min_size: float = 1e-3
    box_weights: tuple = (1.0, 1.0, 1.0, 1.0)
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_top_n_train: int = 2000
    post_nms_top_n_train: int = 2000

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "RPN":
        scores, boxes = _tensors(ctx, "scores", v["scores"]), _tensors(ctx, "boxes", v["boxes"])
        if len(scores) != len(boxes):
            ctx.fail("boxes", f"rpn(): {len(scores)} score tensors but {len(boxes)} box tensors")
        weights = ctx.numbers("box_weights", v["box_weights"], 4)
        return cls(scores, boxes, ctx.tensor("proposals", v["proposals"]),
                   ctx.number("pre_nms_top_n", v["pre_nms_top_n"], low=1, integer=True),
                   ctx.number("post_nms_top_n", v["post_nms_top_n"], low=1, integer=True),
                   float(ctx.number("nms_thresh", v["nms_thresh"], low=0, high=1)),
                   float(ctx.number("score_thresh", v["score_thresh"], low=0, high=1)),
                   float(ctx.number("min_size", v["min_size"], low=0)), tuple(map(float, weights)),
                   **training_settings(ctx, v),
                   pre_nms_top_n_train=ctx.number("pre_nms_top_n_train", v["pre_nms_top_n_train"], low=1, integer=True),
                   post_nms_top_n_train=ctx.number("post_nms_top_n_train", v["post_nms_top_n_train"], low=1, integer=True))

    def tensors(self) -> tuple:
        return self.scores + self.boxes + (self.proposals,)

    def renamed(self, redirect: dict) -> "RPN":
        return replace(self, scores=tuple(redirect.get(t, t) for t in self.scores),
                       boxes=tuple(redirect.get(t, t) for t in self.boxes))
