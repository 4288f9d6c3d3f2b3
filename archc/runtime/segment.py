"""``archc.segment``: a class per pixel of each image, at the image's own size.

    model = archc.load("unet")
    for r in archc.segment(model, "unet.safetensors", ["cells.png"]):
        r["mask"]          # (H, W) class indices at the image's size
        r["classes"]       # [{"index", "name", "fraction"}], the largest share first

Any network whose output is class scores per input pixel: at the input's resolution (a
same-padding U-Net, torchvision's segmenters, whose ``out`` is upsampled to the input), or
smaller by a margin of lost border pixels (the paper's U-Net, unpadded convolutions: 572 in,
388 out). runtime/tiling.py derives that margin from the network's size analysis. How an image
goes through the network (``how`` in the result):

* ``whole``: the image at its own resolution, mirrored by the margin at its borders and further
  at its bottom and right edges up to the nearest size the network accepts (a same-padding
  U-Net takes multiples of 16); the output cropped to the image;
* ``tiled``: overlap-tile inference (the U-Net paper): input tiles of the network's input size
  (or ``tile_size``) whose outputs tile the image, run in batches and stitched; the default
  where the margin is > 0 and the image is larger than one tile's output (``tile=True`` forces
  it, ``tile=False`` refuses it);
* ``resized``: the image resized to the network's input size (``size="input"``, or where it
  accepts no other size), its scores bilinearly resized back to the image's size before the
  argmax, as torchvision's segmenters resize their ``out`` (``align_corners=False``).

Normalisation is the one the network declares or the weights record (runtime/pipeline.py, as
``archc.predict``); a pipeline's resize and centre crop are a classifier's and do not apply.
Class names: those the weights record, VOC's for 21 classes, else ``class N``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import pipeline as P
from . import tiling
from .logits import ends_in_softmax, logits_node
from .predict import (PredictError, check_variables, declared_preprocess, load_image, preprocess_spec,
                      read_variables)

SIZES = ("auto", "input")


class SegmentError(ValueError):
    """A network that gives no per-pixel scores, or a request it cannot run (CLI: one line, exit 2)."""


def class_names(metadata: dict | None, classes: int) -> list:
    """The names of ``classes`` outputs: those the weights record (``archc.classes``), else
    Pascal VOC's for 21 (torchvision's segmenters), else ``class 0``, ``class 1``…"""
    from .record import recorded_classes
    names = recorded_classes(metadata)
    if names is not None and len(names) == classes:
        return names
    if classes == 21:
        from ..detection.api import class_names as named
        return list(named("voc"))
    return [f"class {c}" for c in range(classes)]


def segment(model, variables, images, *, preprocess=None, metadata: dict | None = None, tile: bool | None = None,
            tile_size: tuple | None = None, size: str = "auto", batch: int = 4, scores: bool = False) -> list:
    """Segment ``images`` (paths, PIL images or HxW[xC] uint8 arrays; one or a list).
    ``variables``: a variables dict or a file written by ``archc import``/``train``.

    ``tile``: None (overlap-tile where the image is larger than one tile's output), True or
    False; ``tile_size`` (H, W): the input tile, a size the network accepts (default: its input
    size); ``size``: ``"auto"`` (the image's own resolution where the network runs on it) or
    ``"input"`` (resized to the network's input size); ``batch``: tiles per network call;
    ``scores``: also return the class scores (the network's logits) at the image's size.

    Returns per image ``{"file", "size": (H, W), "mask": (H, W) uint8 (uint16 beyond 256
    classes), "classes": [{"index", "name", "fraction"}] (the classes present, the largest share
    first), "names": every class's name, "how": "whole" | "tiled" | "resized", "tiles": N}``,
    and ``"scores"`` (H, W, K) float32 when asked.
    """
    from .overlay import present
    if size not in SIZES:
        raise SegmentError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    if tile and size == "input":
        raise SegmentError("tiling runs the image at its own resolution: it cannot also be resized to the "
                           "network's input size (size='input')")
    if int(batch) < 1:
        raise SegmentError("batch must be at least 1")
    geom = _geometry(model, tile_size)
    variables, metadata = read_variables(variables, metadata)
    _check_variables(model, variables)
    spec = preprocess_spec(preprocess, metadata, declared_preprocess(model), name=model.name)
    channels = int(model.input_shape[-1])
    stats = P.statistics(spec, channels)
    k = int(model.output_shape[-1])
    names = class_names(metadata, k)
    pictures = _images(images)                   # fail on a bad file before running anything
    run = _runner(model, variables, int(batch))
    results = []
    for i, (label, picture) in enumerate(pictures):
        picture = P.to_mode(picture, channels)
        h, w = picture.height, picture.width
        logits, how, count = _scores(picture, geom, spec, stats, run, tile=tile, size=size)
        mask = np.argmax(logits, axis=-1).astype(np.uint8 if k <= 256 else np.uint16)
        r = {"file": label if label is not None else f"<image {i}>", "size": (h, w), "mask": mask,
             "classes": present(mask, names), "names": names, "how": how, "tiles": count}
        if scores:
            r["scores"] = logits
        results.append(r)
    return results


def _geometry(model, tile_size):
    if model.graph.declarations.get("detect") is not None:
        raise SegmentError(f"{model.name} is a detector (it declares detect(...)): use archc detect")
    try:
        return tiling.geometry(model, tile_size)
    except tiling.GeometryError as e:
        raise SegmentError(str(e)) from None


def _check_variables(model, variables) -> None:
    try:
        check_variables(model, variables)
    except PredictError as e:
        from ..detection.api import _weights_classes
        k = _weights_classes(model, variables)
        if not k:
            raise
        raise SegmentError(f"{e}; these weights have {k} classes: load the network with "
                           f"archc.load({model.name!r}, classes={k}) (--param classes={k})") from None


def _images(images) -> list:
    """[(file name or None, PIL image)], each file read once, a bad one reported first."""
    from PIL import Image
    if isinstance(images, (str, Path)) or hasattr(images, "convert") or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3)):
        images = [images]
    out = []
    for im in images:
        if isinstance(im, (str, Path)):
            out.append((str(im), load_image(im, convert=False)))
        elif hasattr(im, "convert"):
            out.append((None, im))
        else:
            a = np.asarray(im)
            if a.dtype != np.uint8 or a.ndim not in (2, 3):
                raise SegmentError(f"an image array must be HxW or HxWxC uint8 pixels, not {a.dtype} {a.shape}")
            out.append((None, Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)))
    if not out:
        raise SegmentError("no images given")
    return out


def _runner(model, variables, batch: int):
    """inputs (N, H, W, C) of one size -> the logits (N, h, w, K), ``batch`` at a time (the last
    call padded to ``batch`` when there are several, so that one compiled shape serves)."""
    graph = model.graph
    node = logits_node(graph) if ends_in_softmax(graph) else None

    def apply(x):
        if node is None:
            return np.asarray(model.apply(variables, x))
        return np.asarray(model.apply(variables, x, outputs=(node,))[node])

    def run(xs: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(xs), batch):
            chunk = xs[i:i + batch]
            n = len(chunk)
            if n < batch and len(xs) > batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
            outs.append(apply(chunk)[:n])
        return np.concatenate(outs)
    return run


def _normalized(picture, stats) -> np.ndarray:
    mean, std, bgr = stats
    return P.normalize(P.to_array(picture, len(mean)), mean, std, bgr)


def _scores(picture, geom: tiling.Geometry, spec: dict, stats, run, *, tile, size) -> tuple:
    """(logits (H, W, K) at the picture's size, how, tiles run) for one picture."""
    h, w = picture.height, picture.width
    larger = h > geom.out[0] or w > geom.out[1]
    if tile or (tile is None and size == "auto" and any(geom.margin) and larger):
        x = _normalized(picture, stats)
        inputs, spots = tiling.tiles(x, geom)
        outs = run(np.stack(inputs))
        return tiling.stitch(outs, spots, (h, w), geom), "tiled", len(inputs)
    if size == "auto":
        fitted = tiling.whole(_normalized(picture, stats), geom)
        if fitted is not None:
            x, (h, w) = fitted
            return run(x[None])[0][:h, :w], "whole", 1
    # resized to the output of one tile (the network's input, less its margin), as it was built
    oh, ow = geom.out
    small = picture.resize((ow, oh), P.resample(spec)) if (w, h) != (ow, oh) else picture
    x = tiling.mirror(_normalized(small, stats), geom.margin, geom.margin)
    y = run(x[None])[0]
    return resize_scores(y, (h, w)), "resized", 1


def resize_scores(y: np.ndarray, size: tuple) -> np.ndarray:
    """(h, w, K) scores bilinearly resized to ``size`` (H, W): half-pixel centres, no
    antialiasing, as ``torch.nn.functional.interpolate(…, mode="bilinear",
    align_corners=False)`` (torchvision's segmenters' ``out``)."""
    if tuple(y.shape[:2]) == tuple(size):
        return y
    import jax
    return np.asarray(jax.image.resize(y, (int(size[0]), int(size[1]), y.shape[-1]), "linear", antialias=False))


__all__ = ["segment", "class_names", "resize_scores", "SegmentError"]
