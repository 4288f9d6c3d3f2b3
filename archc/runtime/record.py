"""What a weights file records for inference, and the network rebuilt from that record.

``archc train`` writes these string entries into ``best.safetensors``/``last.safetensors``
(``archc import`` the ones it knows), so that ``archc predict|evaluate|export|detect`` and
``archc.predict`` need nothing but the file:

=====================  =====================================================================
``archc.model``        the network's name
``archc.spec``         the spec as given to training (a built-in name or an .arch path)
``archc.arch``         the text of that .arch file, as trained (a user's file may change)
``archc.params``       JSON: the family parameters set (``{"classes": 3}``)
``archc.input_shape``  JSON: [H, W, C]
``archc.preprocess``   JSON: the input pipeline (runtime/pipeline.py), e.g. ``{"mode": "unit", …}``
``archc.classes``      JSON: the class names, in output order
``archc.task``         classification | segmentation | detection
``archc.category_ids`` JSON: a detector's COCO category id of each label 1..K (its data's)
=====================  =====================================================================
"""
from __future__ import annotations

import json
from pathlib import Path

from .pipeline import pipeline


class RecordError(ValueError):
    """A weights file that cannot say which network it belongs to."""


def inference_metadata(model, *, spec: str | None, params: dict | None, preprocess: dict | None,
                       classes: list | None, task: str | None, category_ids: list | None = None) -> dict:
    """The ``archc.*`` entries for weights of ``model`` (see the module's table)."""
    meta = {"archc.model": model.name, "archc.params": json.dumps(dict(params or {}), sort_keys=True),
            "archc.input_shape": json.dumps([int(d) for d in model.input_shape])}
    if spec:
        meta["archc.spec"] = str(spec)
        main = next(iter(getattr(model.graph, "sources", {}).values()), None)
        if main is not None and not _is_builtin(spec):
            meta["archc.arch"] = main
    if preprocess is not None:
        meta["archc.preprocess"] = json.dumps(pipeline(preprocess), sort_keys=True)
    if classes is not None:
        meta["archc.classes"] = json.dumps([str(c) for c in classes])
    if task is not None:
        meta["archc.task"] = task
    if category_ids is not None:
        meta["archc.category_ids"] = json.dumps([int(c) for c in category_ids])
    return meta


def _json(meta: dict | None, key: str):
    try:
        return json.loads(meta[key]) if meta and meta.get(key) else None
    except ValueError:
        return None


def recorded_classes(meta: dict | None) -> list | None:
    """The class names a weights file records (``archc.classes``; ``classes`` in runs written
    before the ``archc.*`` record), or None."""
    names = _json(meta, "archc.classes")
    if names is None:
        names = _json(meta, "classes")
    return [str(n) for n in names] if isinstance(names, list) else None


def recorded_params(meta: dict | None) -> dict:
    """The family parameters the weights were made with (``--param`` values, the class count)."""
    params = _json(meta, "archc.params")
    if params is None:              # runs written before the archc.* record
        params = _json(meta, "params") or {}
        if meta and meta.get("num_classes"):
            params = {**params, "classes": int(meta["num_classes"])}
    return dict(params) if isinstance(params, dict) else {}


def recorded_category_ids(meta: dict | None) -> list | None:
    """A detector's category id of each label 1..K (``archc.category_ids``), or None."""
    ids = _json(meta, "archc.category_ids")
    return [int(i) for i in ids] if isinstance(ids, list) else None


def recorded_task(meta: dict | None) -> str | None:
    return (meta or {}).get("archc.task") or None


def read_record(path) -> dict:
    """A weights file's string metadata, or {} for a file that is not safetensors (the caller
    reports an unreadable file where it reads the tensors)."""
    from .predict import read_metadata
    try:
        return read_metadata(path) if path is not None and Path(path).is_file() else {}
    except Exception:           # noqa: BLE001 - safetensors' own errors: reported when loading
        return {}


def _is_builtin(spec: str) -> bool:
    from ..compiler.resolve import locate
    if Path(spec).is_file() or spec.endswith(".arch") and Path(spec).exists():
        return False
    try:
        locate(spec)
        return True
    except Exception:           # noqa: BLE001 - ArchError: not a built-in name
        return False


def _same_network(spec: str, meta: dict) -> bool:
    name = meta.get("archc.model")
    return bool(name) and Path(str(spec).split(":")[0]).stem == name


def graph_for_weights(spec: str | None, meta: dict, params: dict | None = None,
                      input_shape: tuple | None = None):
    """The network that weights with metadata ``meta`` belong to. ``spec`` given: that spec,
    with the recorded parameters and input shape when it names the recorded network (``params``
    and ``input_shape`` given override them); no spec: the recorded built-in name, else the
    recorded .arch text."""
    from ..compiler.build import build_graph
    same = spec is None or _same_network(spec, meta)
    chosen = {**(recorded_params(meta) if same else {}), **dict(params or {})}
    if input_shape is None and same:
        shape = _json(meta, "archc.input_shape")
        input_shape = tuple(shape) if isinstance(shape, list) and len(shape) == 3 else None
    if spec is not None:
        return build_graph(spec, chosen, input_shape)
    recorded_spec = meta.get("archc.spec")
    if meta.get("archc.arch"):
        return build_graph(text=meta["archc.arch"], filename=meta.get("archc.model") or "net",
                           params=chosen, input_shape=input_shape)
    if recorded_spec and _is_builtin(recorded_spec):
        return build_graph(recorded_spec, chosen, input_shape)
    raise RecordError("the weights file does not record its network: give a spec (a built-in name or "
                      "an .arch file) before --weights")


__all__ = ["inference_metadata", "recorded_classes", "recorded_params", "recorded_task", "recorded_category_ids",
           "read_record",
           "graph_for_weights", "RecordError"]
