"""``archc.export`` / ``archc export``: a model and its variables -> ONNX, StableHLO or Flax (Linen or NNX) source.

    archc.export(model, variables, "resnet50.onnx")                      # format from the suffix
    archc.export(model, variables, "resnet50.stablehlo", batch=8)
    source = archc.export(model, variables, format="flax")               # no path: the artifact
    source = archc.export(model, variables, format="nnx")                # the NNX module's source
    run = archc.load_exported("resnet50.stablehlo"); y = run(x)

ONNX: ``compiler/onnx.py`` (NCHW by default, ``layout="nhwc"`` keeps archc's interface).
StableHLO: ``jax.export`` of the inference function with a symbolic batch, serialized together
with the variables in one safetensors file (the program is a uint8 tensor, the interface JSON
metadata). Flax: ``compiler/flax_source.py`` (Linen), ``compiler/nnx_source.py`` (NNX). A file is written whole or not at all.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ..compiler.onnx import DEFAULT_OPSET, ExportError
from .variables_io import use_umask

FORMATS = {"onnx": ".onnx", "stablehlo": ".stablehlo", "flax": ".py", "nnx": ".py"}   # .py alone: flax
_PROGRAM = "__stablehlo__"
_VARIABLES = "variables/"


def export(model, variables, path=None, *, format: str | None = None, batch="dynamic",
           layout: str | None = None, opset: int | None = None):
    """Export ``model`` with ``variables``. ``format``: 'onnx', 'stablehlo', 'flax' or 'nnx' (default:
    from the suffix of ``path``); ``batch``: 'dynamic' or an int; ``layout`` (ONNX): 'nchw'
    (default) or 'nhwc'; ``opset`` (ONNX, default 17). With ``path`` the file is written (whole,
    or not at all) and its Path returned; without, the artifact: an ``onnx.ModelProto``, the
    StableHLO file's bytes, or the Flax (Linen / NNX) module's source."""
    format = format or _format_of(path)
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    if batch != "dynamic" and (not isinstance(batch, int) or batch < 1):
        raise ExportError(f"batch must be 'dynamic' or a positive int, not {batch!r}")
    if format != "onnx" and (layout not in (None, "nhwc") or opset is not None):
        raise ExportError(f"--layout nchw and --opset are ONNX options; {format} keeps archc's NHWC")
    if format == "onnx":                       # what the graph alone rules out, before any work
        from ..compiler.onnx import check_exportable
        check_exportable(model.graph, opset or DEFAULT_OPSET)
    variables = _numpy(variables)
    check_variables(model, variables)
    if format == "onnx":
        from ..compiler.onnx import to_onnx
        artifact = to_onnx(model.graph, variables, opset=opset or DEFAULT_OPSET, batch=batch, layout=layout or "nchw")
        data = artifact.SerializeToString() if path is not None else None
    elif format == "stablehlo":
        artifact = data = _stablehlo(model, variables, batch)
    elif format == "flax":
        from ..compiler.flax_source import to_flax_source
        artifact = to_flax_source(model.graph)
        data = artifact.encode()
    else:
        from ..compiler.nnx_source import to_nnx_source
        artifact = to_nnx_source(model.graph)
        data = artifact.encode()
    if path is None:
        return artifact
    write_whole(Path(path), data)
    return Path(path)


def check_variables(model, variables) -> None:
    """Every variable the model reads is there with its shape (a file made for another network
    would otherwise fail deep inside a rule)."""
    for spec in model.variable_specs:
        leaf = variables.get(spec.collection, {}).get(spec.node, {}).get(spec.leaf)
        if leaf is None:
            raise ExportError(f"the variables have no {spec.collection}/{spec.node}/{spec.leaf}: "
                              f"were they made for another network than {model.name!r}?")
        if tuple(leaf.shape) != tuple(spec.shape):
            raise ExportError(f"{spec.collection}/{spec.node}/{spec.leaf} has shape {tuple(leaf.shape)}; "
                              f"{model.name!r} needs {tuple(spec.shape)}")


def _format_of(path) -> str:
    suffix = Path(path).suffix if path is not None else ""
    for name, ext in FORMATS.items():
        if suffix == ext:
            return name
    raise ExportError("give the format (onnx, stablehlo, flax or nnx)" + (f": {path} has no known suffix" if path else ""))


def _numpy(variables) -> dict:
    return {c: {n: {k: np.asarray(a) for k, a in leaves.items()} for n, leaves in nodes.items()}
            for c, nodes in variables.items()}


def write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, renamed into place:
    a failure leaves no partial file (and an existing file unchanged)."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ExportError(f"cannot write {path}: the folder {folder} does not exist")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        use_umask(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise ExportError(f"cannot write {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# StableHLO
# ---------------------------------------------------------------------------------------------
def _stablehlo(model, variables, batch) -> bytes:
    import jax
    from jax import export as jax_export
    from safetensors.numpy import save
    from .variables_io import flatten_variables

    graph = model.graph
    outputs = tuple(graph.outputs)
    n = jax_export.symbolic_shape("N")[0] if batch == "dynamic" else batch
    xs = tuple(jax.ShapeDtypeStruct((n,) + tuple(graph.nodes[i].shape), np.float32) for i in graph.inputs)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)

    def infer(variables, *xs):
        y = model.apply_fn(variables, xs[0] if len(xs) == 1 else xs, outputs=outputs)
        return tuple(y[o] for o in outputs)

    exported = jax_export.export(jax.jit(infer))(abstract, *xs)
    tensors = {_VARIABLES + k: np.ascontiguousarray(a) for k, a in flatten_variables(variables).items()}
    tensors[_PROGRAM] = np.frombuffer(bytes(exported.serialize()), np.uint8)
    meta = {"format": "archc-stablehlo", "name": graph.name, "inputs": json.dumps(list(graph.inputs)),
            "outputs": json.dumps(list(outputs)), "batch": str(batch)}
    return save(tensors, metadata=meta)


class Exported:
    """A network loaded from an export; ``run(x)`` -> the primary output, or a dict name ->
    array when the network has several outputs. ``x``: one array, or one per input."""

    def __init__(self, call, inputs, outputs, path):
        self._call, self.inputs, self.outputs, self.path = call, inputs, outputs, path

    def __call__(self, *xs):
        ys = self._call(*xs)
        return ys[0] if len(ys) == 1 else dict(zip(self.outputs, ys))

    def __repr__(self) -> str:
        return f"Exported({str(self.path)!r}, inputs={self.inputs}, outputs={self.outputs})"


def load_exported(path) -> Exported:
    """Call back a StableHLO export (on JAX) or an ONNX export (on ONNX Runtime)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.suffix == ".onnx":
        return _load_onnx(path)
    from safetensors import safe_open
    from safetensors.numpy import load_file
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
    except Exception as e:   # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise ExportError(f"{path} is not an archc StableHLO export ({e})") from None
    if meta.get("format") != "archc-stablehlo":
        raise ExportError(f"{path} is not an archc StableHLO export (format {meta.get('format')!r})")
    import jax
    from jax import export as jax_export
    from .variables_io import unflatten_variables
    tensors = load_file(str(path))
    exported = jax_export.deserialize(bytearray(tensors.pop(_PROGRAM).tobytes()))
    leaves, tree = jax.tree.flatten(unflatten_variables({k[len(_VARIABLES):]: a for k, a in tensors.items()}))
    # safetensors stores a scalar (normalize's count) as shape (1,): the program's shapes rule
    variables = jax.tree.unflatten(tree, [jax.numpy.asarray(a).reshape(aval.shape)
                                          for a, aval in zip(leaves, exported.in_avals)])
    return Exported(lambda *xs: exported.call(variables, *xs), json.loads(meta["inputs"]), json.loads(meta["outputs"]), path)


def onnx_session(model_or_path, optimize: bool = True, threads: int | None = None):
    """An ONNX Runtime CPU session; ``optimize=False`` turns every graph optimisation off."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    source = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def _load_onnx(path: Path) -> Exported:
    session = onnx_session(path)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    return Exported(lambda *xs: session.run(None, dict(zip(inputs, (np.asarray(x, np.float32) for x in xs)))),
                    inputs, outputs, path)
