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
* ``none``: pixels 0-255 as they are (Keras EfficientNet rescales inside the model).

``resize``: the shorter side before the centre crop (scaled with the model's input size), or
``"exact"``: straight to the input size (Keras's ``load_img(target_size=…)``).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..compiler.declarations import PREPROCESS_MODES, DeclarationError, Preprocess, bind_values, to_json
from .logits import ends_in_softmax

CLASSES_FILE = Path(__file__).resolve().parent.parent / "data" / "imagenet_classes.txt"

_MEAN_STD = {
    "torch": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
MODES = PREPROCESS_MODES
DEFAULT = to_json(Preprocess())


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
    (the network's declaration), else the one recorded in ``metadata``, else torch's. Warns
    (:class:`PreprocessWarning`) when the recorded mode disagrees with the declaration."""
    recorded = recorded_preprocess(metadata)
    if declared and recorded and recorded.get("mode") != declared.get("mode"):
        import warnings
        warnings.warn(f"the weights file records preprocessing mode {recorded.get('mode')!r} but {name} "
                      f"declares {declared.get('mode')!r}; using {declared.get('mode')!r} (pass "
                      f"--preprocess / preprocess= to choose)", PreprocessWarning, stacklevel=3)
    if preprocess is None:
        preprocess = declared or recorded or dict(DEFAULT)
    if isinstance(preprocess, str):
        preprocess = {"mode": preprocess, "resize": "exact" if preprocess in ("tf", "caffe", "none") else 256,
                      "crop": 224}
    if not isinstance(preprocess, dict):
        raise PredictError(f"preprocess= is a mode name ({', '.join(MODES)}) or a dict of preprocess() "
                           f"arguments, not {preprocess!r}")
    try:        # one check and one type for a declaration, a recorded pipeline and a user's dict
        return to_json(bind_values("preprocess", preprocess))
    except DeclarationError as e:
        raise PredictError(f"preprocessing: {e}") from None


def load_image(path):
    """An RGB PIL image from a PNG/JPEG (or anything Pillow reads)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise PredictError("reading images needs Pillow (pip install pillow)") from None
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PredictError(f"{path}: is a directory, not an image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise PredictError(f"{path}: not a readable image ({e})") from None


def preprocess_image(image, size: tuple, spec: dict) -> np.ndarray:
    """One image (path, PIL image, or HxWx3 uint8 array) -> float32 HxWx3 model input."""
    from PIL import Image
    if isinstance(image, (str, Path)):
        image = load_image(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    h, w = int(size[0]), int(size[1])
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                "nearest": Image.NEAREST}.get(spec.get("interpolation", "bilinear"), Image.BILINEAR)
    if spec.get("resize") == "exact":
        image = image.resize((w, h), resample)
    else:
        crop = int(spec.get("crop", 224))
        short = int(round(int(spec.get("resize", 256)) * min(h, w) / crop))
        iw, ih = image.size
        scale = short / min(iw, ih)
        nw, nh = max(w, int(round(iw * scale))), max(h, int(round(ih * scale)))
        image = image.resize((nw, nh), resample)
        left, top = int(round((nw - w) / 2.0)), int(round((nh - h) / 2.0))
        image = image.crop((left, top, left + w, top + h))
    x = np.asarray(image, dtype=np.float32)
    mode = spec["mode"]
    if mode in _MEAN_STD:
        mean, std = _MEAN_STD[mode]
        x = (x / 255.0 - np.array(mean, np.float32)) / np.array(std, np.float32)
    elif mode == "tf":
        x = x / 127.5 - 1.0
    elif mode == "caffe":
        x = x[..., ::-1] - np.array(_CAFFE_BGR_MEAN, np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


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


def predict(model, variables, images, *, top: int = 5, preprocess=None, metadata: dict | None = None,
            batch: int = 8) -> list:
    """Classify ``images`` (paths, PIL images or uint8 arrays). ``variables``: a variables dict or
    the path of a file written by ``archc import``. The preprocessing is the one the network
    declares (``preprocess=`` overrides it; see the module's docstring).

    Returns one dict per image: ``{"file", "top": [{"index", "label", "prob"}, …]}``, best first.
    """
    if isinstance(variables, (str, Path)):
        from .variables_io import load_variables
        if not Path(variables).is_file():
            raise PredictError(f"{variables}: no such weights file")
        try:
            metadata = {**read_metadata(variables), **(metadata or {})}
            variables = load_variables(variables)
        except Exception as e:
            raise PredictError(f"{variables}: not a variables file written by archc ({e})") from None
    check_variables(model, variables)
    spec = preprocess_spec(preprocess, metadata, declared_preprocess(model), name=model.name)
    if len(model.graph.inputs) != 1 or len(model.input_shape) != 3:
        raise PredictError(f"{model.name}: predict needs a model with one image input")
    size = model.input_shape[:2]
    classes = model.output_shape[-1] if len(model.output_shape) == 1 else None
    if classes is None:
        raise PredictError(f"{model.name}: output {model.output_shape} is not a vector of class scores")
    names = imagenet_classes() if classes == len(imagenet_classes()) else None
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
            k = min(int(top), p.shape[-1])
            idx = np.argsort(-p, kind="stable")[:k]
            im = images[i + j]
            results.append({
                "file": str(im) if isinstance(im, (str, Path)) else f"<image {i + j}>",
                "top": [{"index": int(c), "label": names[c] if names else str(int(c)), "prob": float(p[c])}
                        for c in idx],
            })
    return results


def decode_line(entry: dict) -> str:
    """One result as Keras's ``decode_predictions`` is usually printed: ``soccer_ball (92.07%)``."""
    return f"{entry['label']} ({entry['prob']:.2%})"


__all__ = ["predict", "preprocess_image", "preprocess_spec", "declared_preprocess", "imagenet_classes",
           "load_image", "read_metadata", "decode_line", "PredictError", "PreprocessWarning"]
