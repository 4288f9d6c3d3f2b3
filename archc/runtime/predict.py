"""Classify images with imported weights: the reference preprocessing of each source, ImageNet names.

    model = archc.load("resnet50")
    variables = archc.load_variables("r50.safetensors")        # written by `archc import`
    for r in archc.predict(model, variables, ["cat.jpg", "dog.png"], top=5):
        print(r["file"], r["top"][0]["label"], r["top"][0]["prob"])

Preprocessing (``preprocess=`` a mode name or a dict to override): by default the pipeline the
network variant declares in its .arch file (``preprocess(mode=…, resize=…)``, graph.declarations),
whether the variables come from a file, from ``archc.import_weights`` or from ``init``; for a
network that declares none, the one recorded in the weights file (``archc import``/``archc train``
write it), else torch. A recorded mode that disagrees with the declaration is reported
(:class:`PreprocessWarning`) and the declaration wins. The modes:

* ``torch``: resize the shorter side, centre crop, /255, ImageNet mean/std (torchvision, timm,
  Keras DenseNet);
* ``inception``: the same with mean = std = 0.5 (timm's Inception family);
* ``tf``: x/127.5 - 1, i.e. [-1, 1] (Keras Inception, Xception, MobileNet, ResNet v2);
* ``caffe``: RGB -> BGR and the ImageNet BGR mean subtracted, no scaling (Keras ResNet50, VGG);
* ``none``: pixels 0-255 as they are (Keras EfficientNet rescales inside the model);
* ``unit``: /255, i.e. [0, 1] (``archc train``'s default for a network that declares nothing).

One vocabulary for training and inference: runtime/pipeline.py applies it in both. Weights
written by ``archc train`` also record the class names, printed instead of indices.

``resize``: the shorter side before the centre crop (scaled with the model's input size), or
``"exact"``: straight to the input size (Keras's ``load_img(target_size=…)``).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..compiler.declarations import to_json
from . import pipeline as P
from .logits import ends_in_softmax

CLASSES_FILE = Path(__file__).resolve().parent.parent / "data" / "imagenet_classes.txt"
DEFAULT = P.pipeline({})


class PreprocessWarning(UserWarning):
    """A weights file records another preprocessing mode than the network declares."""


class PredictError(ValueError):
    """An unreadable image or an invalid preprocessing request."""


@lru_cache(maxsize=1)
def imagenet_classes() -> list:
    """The 1000 ImageNet-1k class names, in the index order of torchvision and Keras."""
    return CLASSES_FILE.read_text(encoding="utf-8").splitlines()


def declared_preprocess(model_or_graph) -> dict | None:
    """The input pipeline a network declares (``preprocess(...)`` in its .arch file), or None."""
    graph = getattr(model_or_graph, "graph", model_or_graph)
    decl = getattr(graph, "declarations", {}).get("preprocess")
    return to_json(decl) if decl is not None else None


def recorded_preprocess(metadata: dict | None) -> dict | None:
    """The pipeline recorded in a weights file's metadata (``archc.preprocess``), or None."""
    if not metadata or not metadata.get("archc.preprocess"):
        return None
    try:
        got = json.loads(metadata["archc.preprocess"])
    except ValueError:
        return None
    return got if isinstance(got, dict) else None


def preprocess_spec(preprocess=None, metadata: dict | None = None, declared: dict | None = None,
                    *, name: str = "the network") -> dict:
    """The pipeline to apply: ``preprocess`` (a mode name or dict) if given, else ``declared``
    (the network's declaration), else the one recorded in ``metadata``, else torch's. Where the
    recorded and the declared normalisation agree, the recorded pipeline (its resize: what the
    weights were trained and validated with); where they disagree the declaration wins, with a
    :class:`PreprocessWarning` naming both."""
    recorded = recorded_preprocess(metadata)
    try:
        recorded = P.pipeline(recorded) if recorded else None
        declared = P.pipeline(declared) if declared else None
        if declared and recorded and not P.same_normalization(declared, recorded):
            import warnings
            warnings.warn(f"the weights file records preprocessing mode {P.describe(recorded)!r} but {name} "
                          f"declares {P.describe(declared)!r}; using {P.describe(declared)!r} (pass "
                          f"--preprocess / preprocess= to choose)", PreprocessWarning, stacklevel=3)
        elif declared and recorded:
            declared = recorded     # the same normalisation: the geometry the weights were trained with
        return P.pipeline(preprocess if preprocess is not None else declared or recorded or DEFAULT)
    except P.PipelineError as e:
        raise PredictError(str(e)) from None


def load_image(path, convert: bool = True):
    """A PIL image from a PNG/JPEG (or anything Pillow reads): RGB, or as stored (``convert=False``)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise PredictError("reading images needs Pillow (pip install pillow)") from None
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB") if convert else im.copy()
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PredictError(f"{path}: is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise PredictError(f"{path}: not a readable image ({e})") from None


def preprocess_image(image, size: tuple, spec: dict) -> np.ndarray:
    """One image (path, PIL image, or HxWx3 uint8 array) -> float32 HxWxC model input; ``size``
    is (H, W) or (H, W, C) (3 channels when not said)."""
    from PIL import Image
    if isinstance(image, (str, Path)):
        image = load_image(image, convert=False)
    elif isinstance(image, np.ndarray):
        a = np.asarray(image, dtype=np.uint8)
        image = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
    try:
        return P.apply(image, tuple(size), spec)
    except P.PipelineError as e:
        raise PredictError(str(e)) from None


def _probabilities(model, y: np.ndarray) -> np.ndarray:
    if ends_in_softmax(model.graph):
        return y
    z = y - y.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def check_variables(model, variables) -> None:
    """Raise PredictError unless ``variables`` has exactly the model's variables and shapes."""
    problems = []
    for v in model.variable_specs:
        try:
            shape = tuple(variables[v.collection][v.node][v.leaf].shape)
        except (KeyError, TypeError):
            problems.append(f"{v.collection}/{v.node}/{v.leaf} is missing")
            continue
        if shape != tuple(v.shape):
            problems.append(f"{v.collection}/{v.node}/{v.leaf} is {shape}, the model needs {tuple(v.shape)}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise PredictError(f"the weights do not fit {model.name} {'x'.join(map(str, model.input_shape))}: "
                           + "; ".join(problems[:3]) + more)


def read_metadata(path) -> dict:
    """The string metadata of a safetensors variables file (``archc.source``, ``archc.preprocess``…)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def read_variables(variables, metadata: dict | None = None) -> tuple[dict, dict | None]:
    """``(variables, metadata)``: a variables dict as given, or the variables and string metadata
    of a file written by ``archc import``/``train`` (``metadata`` given overrides its entries)."""
    if not isinstance(variables, (str, Path)):
        return variables, metadata
    from .variables_io import load_variables
    if not Path(variables).is_file():
        raise PredictError(f"{variables}: no such weights file")
    try:
        return load_variables(variables), {**read_metadata(variables), **(metadata or {})}
    except Exception as e:
        raise PredictError(f"{variables}: not a variables file written by archc ({e})") from None


def predict(model, variables, images, *, top: int = 5, preprocess=None, metadata: dict | None = None,
            batch: int = 8) -> list:
    """Classify ``images`` (paths, PIL images or uint8 arrays). ``variables``: a variables dict or
    the path of a file written by ``archc import``. The preprocessing is the one the network
    declares (``preprocess=`` overrides it; see the module's docstring).

    Returns one dict per image: ``{"file", "top": [{"index", "label", "prob"}, …]}``, best first.
    """
    variables, metadata = read_variables(variables, metadata)
    check_variables(model, variables)
    spec = preprocess_spec(preprocess, metadata, declared_preprocess(model), name=model.name)
    if len(model.graph.inputs) != 1 or len(model.input_shape) != 3:
        raise PredictError(f"{model.name}: predict needs a model with one image input")
    size = model.input_shape
    classes = model.output_shape[-1] if len(model.output_shape) == 1 else None
    if classes is None:
        raise PredictError(f"{model.name}: output {model.output_shape} is not a vector of class scores")
    names = class_names(metadata, classes)
    images = list(images)
    xs = [preprocess_image(im, size, spec) for im in images]      # fail on a bad file before running
    results = []
    for i in range(0, len(xs), batch):
        chunk = np.stack(xs[i:i + batch])
        n = len(chunk)
        if n < batch and len(xs) > batch:        # keep one compiled batch shape
            chunk = np.concatenate([chunk, np.zeros((batch - n,) + chunk.shape[1:], np.float32)])
        y = np.asarray(model.apply(variables, chunk), dtype=np.float64)[:n]
        probs = _probabilities(model, y)
        for j, p in enumerate(probs):
            ranked = p[:len(names)] if names else p      # a run on fewer classes: its outputs only
            idx = np.argsort(-ranked, kind="stable")[:min(int(top), ranked.shape[-1])]
            im = images[i + j]
            results.append({
                "file": str(im) if isinstance(im, (str, Path)) else f"<image {i + j}>",
                "top": [{"index": int(c), "label": names[c] if names else str(int(c)), "prob": float(p[c])}
                        for c in idx],
            })
    return results


def class_names(metadata: dict | None, classes: int) -> list | None:
    """The names of ``classes`` outputs: those a run recorded (``archc.classes``: the training
    folders' names; a run on fewer classes than the network has outputs names the first ones,
    the others were never a target), else ImageNet's for 1000 outputs, else None (indices)."""
    from .record import recorded_classes
    names = recorded_classes(metadata)
    if names is not None and len(names) <= classes:
        return names
    return imagenet_classes() if classes == len(imagenet_classes()) else None


def decode_line(entry: dict) -> str:
    """One result as Keras's ``decode_predictions`` is usually printed: ``soccer_ball (92.07%)``."""
    return f"{entry['label']} ({entry['prob']:.2%})"


__all__ = ["predict", "read_variables", "preprocess_image", "preprocess_spec", "declared_preprocess", "imagenet_classes",
           "load_image", "read_metadata", "class_names", "decode_line", "PredictError", "PreprocessWarning"]
