"""One input pipeline for training and inference: what an image becomes before the network.

A pipeline is the ``preprocess(...)`` declaration's values as a dict (``mode``, ``mean``,
``std``, ``resize``, ``crop``, ``interpolation``): a network declares it in its .arch file,
``archc import`` and ``archc train`` record it in the weights they write, and ``archc
predict``/``evaluate``/``export``, ``archc.predict`` and the training loader all apply it
through the functions here, so that a network sees the same numbers in training and after.

Normalisation modes (statistics in [0, 1] units, ``x = (pixel / 255 - mean) / std``):

* ``torch``: ImageNet mean/std (torchvision, timm, Keras DenseNet); ``imagenet`` is a synonym;
* ``inception``/``tf``: mean = std = 0.5, i.e. [-1, 1]; ``symmetric`` is a synonym;
* ``caffe``: RGB -> BGR and the ImageNet BGR mean subtracted, no scaling (Keras ResNet50, VGG);
* ``none``: pixels 0-255 as they are; ``raw`` is a synonym;
* ``unit``: [0, 1] (``archc train``'s default for a network that declares nothing);

``mean``/``std`` given explicitly replace the mode's (1 value or 1 per channel).
"""
from __future__ import annotations

import numpy as np

from ..compiler.declarations import PREPROCESS_MODES, DeclarationError, bind_values, to_json
from ..compiler.declarations import PREPROCESS_STATISTICS as STATISTICS

BGR_MODES = frozenset({"caffe"})
# The names ``archc train --normalize`` used before there was one vocabulary (old run configs).
SYNONYMS = {"imagenet": "torch", "symmetric": "tf", "raw": "none"}
# A mode's reference resize: photo pipelines resize the shorter side and centre-crop; the
# others resize straight to the input (Keras's ``load_img(target_size=…)``).
EXACT_MODES = frozenset({"tf", "caffe", "none", "unit"})


class PipelineError(ValueError):
    """A pipeline that does not check (an unknown mode, statistics of the wrong length)."""


def pipeline(value) -> dict:
    """A checked pipeline dict from a mode name (synonyms too) or a dict of ``preprocess()``
    arguments; missing entries take the declaration's defaults."""
    if isinstance(value, str):
        mode = SYNONYMS.get(value, value)
        value = {"mode": mode, "resize": "exact" if mode in EXACT_MODES else 256, "crop": 224}
    if not isinstance(value, dict):
        raise PipelineError(f"a preprocessing is a mode name ({', '.join(PREPROCESS_MODES)}) or a dict "
                            f"of preprocess() arguments, not {value!r}")
    value = {**value, "mode": SYNONYMS.get(value.get("mode"), value.get("mode", "torch"))}
    try:        # one check and one type for a declaration, a recorded pipeline and a user's dict
        return to_json(bind_values("preprocess", value))
    except DeclarationError as e:
        raise PipelineError(f"preprocessing: {e}") from None


def parse_normalize(text: str) -> dict:
    """``archc train --normalize``: a mode name (or synonym) or ``M1,M2,M3/S1,S2,S3`` in [0, 1]
    units -> the normalisation entries of a pipeline (``mode``, ``mean``, ``std``)."""
    text = str(text).strip()
    mode = SYNONYMS.get(text, text)
    if mode in STATISTICS:
        return {"mode": mode, "mean": None, "std": None}
    try:
        m, s = text.split("/")
        mean = [float(v) for v in m.split(",")]
        std = [float(v) for v in s.split(",")]
    except ValueError:
        raise PipelineError(f"--normalize {text!r}: expected one of {', '.join(STATISTICS)} or MEAN/STD "
                            f"such as 0.5,0.5,0.5/0.25,0.25,0.25") from None
    return pipeline({"mode": "unit", "mean": mean, "std": std, "resize": "exact"})


def describe(spec: dict) -> str:
    """A pipeline's normalisation in a few words: ``unit``, ``mean 0.1,0.2,0.3 std 1,2,3``."""
    if spec.get("mean") is None and spec.get("std") is None:
        return str(spec["mode"])
    fmt = lambda v: ",".join(f"{x:g}" for x in v)      # noqa: E731
    mean, std = spec.get("mean") or STATISTICS[spec["mode"]][0], spec.get("std") or STATISTICS[spec["mode"]][1]
    return f"mean {fmt(mean)} std {fmt(std)}" + (" (BGR)" if spec["mode"] in BGR_MODES else "")


def same_normalization(a: dict, b: dict, channels: int = 3) -> bool:
    """Whether two pipelines give a network the same numbers for the same resized pixels."""
    sa, sb = statistics(a, channels), statistics(b, channels)
    return sa[2] == sb[2] and np.allclose(sa[0], sb[0]) and np.allclose(sa[1], sb[1])


def statistics(spec: dict, channels: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(mean, std, bgr)`` of a pipeline for ``channels``-channel inputs: per-channel float32
    arrays in [0, 1] units, and whether the channels are reversed first."""
    mode = SYNONYMS.get(spec["mode"], spec["mode"])
    if mode not in STATISTICS:
        raise PipelineError(f"unknown preprocessing mode {mode!r}: one of {', '.join(STATISTICS)}")
    mean, std = STATISTICS[mode]
    mean = spec.get("mean") if spec.get("mean") is not None else mean
    std = spec.get("std") if spec.get("std") is not None else std
    mean, std = np.asarray(mean, np.float32).ravel(), np.asarray(std, np.float32).ravel()
    if mean.size == 3 and channels == 1:          # grey images with RGB statistics: average them
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    for v in (mean, std):
        if v.size not in (1, channels):
            raise PipelineError(f"the normalisation has {v.size} values for {channels}-channel images")
    if np.any(std <= 0):
        raise PipelineError("normalisation standard deviations must be positive")
    bgr = mode in BGR_MODES and channels == 3
    return np.broadcast_to(mean, (channels,)).copy(), np.broadcast_to(std, (channels,)).copy(), bgr


def to_mode(image, channels: int):
    """A PIL image in the colour mode a ``channels``-channel network reads: transparency over
    black, grey for one channel, RGB otherwise."""
    from PIL import Image
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        if image.mode in ("RGBA", "LA", "P") and mode == "RGB":
            image = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image)
        image = image.convert(mode)
    return image


def to_array(image, channels: int) -> np.ndarray:
    """A PIL image (already in :func:`to_mode`'s mode) -> float32 HxWxC pixels 0-255."""
    a = np.asarray(image, np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] != channels:               # e.g. 4-channel models: repeat grey
        a = np.repeat(a[..., :1], channels, axis=-1)
    return a


def normalize(a: np.ndarray, mean: np.ndarray, std: np.ndarray, bgr: bool) -> np.ndarray:
    """Pixels 0-255 (HxWxC float32) -> the network's input, as :func:`statistics` says."""
    if bgr:
        a = a[..., ::-1]
    # in pixel units, so that caffe and none are exact (x - 103.939, x) as their references
    mean255 = (np.asarray(mean, np.float64) * 255).astype(np.float32)
    std255 = (np.asarray(std, np.float64) * 255).astype(np.float32)
    return np.ascontiguousarray((a - mean255) / std255, dtype=np.float32)


def resample(spec: dict):
    from PIL import Image
    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "nearest": Image.NEAREST}.get(spec.get("interpolation", "bilinear"), Image.BILINEAR)


def resize(image, size: tuple, spec: dict):
    """The evaluation geometry: straight to ``size`` (``resize="exact"``), or the shorter side
    to ``resize`` (scaled with the input size relative to ``crop``) then a centre crop."""
    h, w = int(size[0]), int(size[1])
    how = resample(spec)
    if spec.get("resize") == "exact":
        return image if image.size == (w, h) else image.resize((w, h), how)
    crop = int(spec.get("crop", 224))
    short = int(round(int(spec.get("resize", 256)) * min(h, w) / crop))
    iw, ih = image.size
    scale = short / min(iw, ih)
    nw, nh = max(w, int(round(iw * scale))), max(h, int(round(ih * scale)))
    image = image.resize((nw, nh), how)
    left, top = int(round((nw - w) / 2.0)), int(round((nh - h) / 2.0))
    return image.crop((left, top, left + w, top + h))


def apply(image, shape: tuple, spec: dict) -> np.ndarray:
    """One PIL image -> float32 HxWxC network input of ``shape`` (H, W, C), as ``spec`` says."""
    h, w, c = (tuple(shape) + (3,))[:3]
    mean, std, bgr = statistics(spec, c)
    return normalize(to_array(resize(to_mode(image, c), (h, w), spec), c), mean, std, bgr)


__all__ = ["pipeline", "parse_normalize", "statistics", "describe", "same_normalization", "apply",
           "to_mode", "to_array", "normalize", "resize", "PipelineError", "STATISTICS", "SYNONYMS"]
