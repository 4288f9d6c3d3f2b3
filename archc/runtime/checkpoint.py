"""Reading pretrained checkpoints as flat ``{name: numpy array}`` dicts, without running code.

Formats, recognised by their content (not their file name):

* PyTorch ``torch.save`` files (``.pth``/``.pt``/``.bin``): with ``torch.load(weights_only=True)``
  when torch is importable, else with :func:`read_torch_zip`, a reader of the zip + pickle format
  whose unpickler knows only the tensor-rebuild functions, storage types and ``OrderedDict``.
  Both refuse a pickle that would call anything else, before calling it.
* safetensors (timm, Hugging Face).
* Keras HDF5: Keras 3 ``save_weights`` files (``.weights.h5``, variables stored by position) and
  legacy ``.h5`` files (``model.save``/Keras 2, variables stored by name), via h5py.
* ``.npz`` archives of arrays (no pickles), and in-memory mappings of arrays.

The result keeps the checkpoint's order (state-dict order for PyTorch, layer order for Keras where
the file records it) and names PyTorch tensors as in the state dict (``layer1.0.conv1.weight``),
Keras variables ``LAYER.LEAF`` (``conv1_conv.kernel``, ``conv1_bn.moving_mean``).
"""
from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot (or must not) be read; the message says why."""


@dataclass
class Checkpoint:
    tensors: dict                   # name -> np.ndarray, in the checkpoint's order
    format: str                     # 'torch', 'safetensors', 'keras', 'keras-legacy', 'npz', 'dict'
    path: str | None = None
    layer_types: dict = field(default_factory=dict)   # Keras: layer name -> class name, where known

    def __len__(self):
        return len(self.tensors)


_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "params", "weights")


def read_checkpoint(source, *, use_torch: bool | None = None) -> Checkpoint:
    """Read ``source`` (a path or a mapping of arrays) into a :class:`Checkpoint`.

    ``use_torch``: None reads PyTorch files with torch when it is importable, False always with
    archc's own restricted reader, True requires torch.
    """
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, Mapping):
        return Checkpoint(_flatten_arrays(source, "the given mapping"), "dict")
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return _read_keras(path)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path}: damaged zip archive ({e})") from None
        if names and all(n.endswith(".npy") for n in names):
            return _read_npz(path)
        if any(n.endswith("data.pkl") for n in names):
            return _read_torch(path, use_torch)
        raise CheckpointError(f"{path}: a zip archive that is neither a PyTorch checkpoint "
                              "(no data.pkl) nor an .npz of arrays")
    if len(head) >= 9 and head[8:9] == b"{":
        return _read_safetensors(path)
    if head[:1] == b"\x80":          # a bare pickle: PyTorch's legacy (pre-1.6) format, or worse
        if use_torch is False or not _torch_available():
            raise CheckpointError(
                f"{path}: a bare pickle (PyTorch's legacy, pre-1.6 format, or an arbitrary pickle). "
                "archc reads it only through torch.load(weights_only=True): install torch, or "
                "re-save it with torch.save(state_dict, path) from a recent PyTorch")
        return _read_torch(path, True)
    raise CheckpointError(f"{path}: unrecognised checkpoint format (expected a PyTorch .pth/.pt/.bin, "
                          ".safetensors, Keras .weights.h5/.h5 or .npz file)")


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------
def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def _read_torch(path: Path, use_torch: bool | None) -> Checkpoint:
    if use_torch is None:
        use_torch = _torch_available()
    if use_torch:
        import torch
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()
            why = next((l for l in first if "Unsupported global" in l or "GLOBAL" in l), first[0] if first else "")
            raise CheckpointError(
                f"{path}: refused: the pickle references something other than tensors, so loading "
                f"it could run code ({why.strip()}). Only state dicts of tensors are read") from None
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint: {type(e).__name__}: {e}") from None
        tensors = _flatten_arrays(_unwrap(obj, path), str(path), to_numpy=_torch_to_numpy)
    else:
        tensors = _flatten_arrays(_unwrap(read_torch_zip(path), path), str(path))
    return Checkpoint(tensors, "torch", str(path))


def _torch_to_numpy(t):
    import torch
    if isinstance(t, torch.Tensor):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    return t


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *args):
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[offset]) if storage.size else np.zeros((), storage.dtype)
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data, *args):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Knows the tensor-rebuild functions, the storage types and OrderedDict; refuses every other
    global *before* it could be called (find_class raises while the pickle is being parsed)."""

    def __init__(self, data: bytes, read_storage):
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage

    def find_class(self, module, name):
        fn = _ALLOWED_GLOBALS.get((module, name))
        if fn is not None:
            return fn
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f"refused: the pickle references {module}.{name}, which is not a tensor, so loading it "
            "could run code. Only state dicts of tensors are read; nothing was executed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"refused: unknown persistent id {pid!r} in the pickle")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"refused: unknown storage type {stype!r}")
        return self._read_storage(str(key), stype.dtype, int(numel))


def read_torch_zip(path) -> object:
    """Read a ``torch.save`` zip archive without torch and without executing code: the object
    graph may hold only tensors (as numpy arrays), dicts, lists, tuples, numbers and strings."""
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: not a PyTorch zip checkpoint ({e})") from None
    with z:
        names = z.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl")), None)
        if pkl is None:
            raise CheckpointError(f"{path}: no data.pkl: not a PyTorch checkpoint")
        prefix = pkl[: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in names:
            order = z.read(prefix + "byteorder").decode().strip() or "little"
        cache: dict = {}

        def read_storage(key, dtype, numel):
            if key not in cache:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise CheckpointError(f"{path}: storage {key} is missing from the archive")
                raw = z.read(entry)
                if dtype == "bfloat16":
                    u = np.frombuffer(raw, dtype="<u2" if order == "little" else ">u2")
                    arr = (u.astype(np.uint32) << 16).view(np.float32)
                else:
                    dt = np.dtype(dtype).newbyteorder("<" if order == "little" else ">")
                    arr = np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype), copy=False)
                cache[key] = arr
            return cache[key]

        try:
            return _TensorsOnlyUnpickler(z.read(pkl), read_storage).load()
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read the pickle: {type(e).__name__}: {e}") from None


def _unwrap(obj, path):
    """A state dict, possibly inside a training checkpoint {'state_dict': …, 'epoch': …}."""
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and not _is_array(inner):
                if all(_is_array(v) or isinstance(v, Mapping) for v in inner.values()):
                    return _strip_module_prefix(inner)
        return _strip_module_prefix(obj)
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")


def _strip_module_prefix(sd):
    keys = [k for k in sd if isinstance(k, str)]
    if keys and all(k.startswith("module.") for k in keys):       # nn.DataParallel
        return OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return sd


def _is_array(v) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _flatten_arrays(tree, what, to_numpy=None) -> dict:
    out: dict = {}

    def walk(prefix, node):
        if to_numpy is not None:
            node = to_numpy(node)
        if _is_array(node):
            arr = np.asarray(node)
            if arr.dtype == object:
                raise CheckpointError(f"{what}: {prefix!r} is an object array, not numbers")
            out[prefix] = arr
        elif isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and prefix:
            out[prefix] = np.asarray(node)
        else:
            pass        # metadata (strings, None, epoch lists…) is not weights

    walk("", tree)
    if not out:
        raise CheckpointError(f"{what}: no tensors found")
    return out


# --------------------------------------------------------------------------------------------
# safetensors, npz
# --------------------------------------------------------------------------------------------
def _read_safetensors(path: Path) -> Checkpoint:
    try:
        from safetensors import safe_open
        tensors = {}
        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as e:
        if "bfloat16" in str(e).lower() or "bf16" in str(e).lower():
            return Checkpoint(_read_safetensors_raw(path), "safetensors", str(path))
        raise CheckpointError(f"{path}: cannot read as safetensors: {e}") from None
    return Checkpoint(tensors, "safetensors", str(path))


def _read_safetensors_raw(path: Path) -> dict:
    """safetensors with bfloat16, which numpy lacks: widened to float32 here."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    dtypes = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
              "I8": "i1", "U8": "u1", "BOOL": "?"}
    out = {}
    for k, info in header.items():
        if k == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = raw[base + a: base + b]
        if info["dtype"] == "BF16":
            arr = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dtypes[info["dtype"]])
        out[k] = arr.reshape(info["shape"]).copy()
    return out


def _read_npz(path: Path) -> Checkpoint:
    try:
        with np.load(str(path), allow_pickle=False) as z:
            tensors = {k: z[k] for k in z.files}
    except ValueError as e:
        raise CheckpointError(f"{path}: refused: {e}") from None
    return Checkpoint(tensors, "npz", str(path))


# --------------------------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------------------------
# Keras 3 save_weights stores each layer's variables by position; their names follow from the
# layer's class (the group is named after it: conv2d, conv2d_1, batch_normalization_3, …).
_KERAS_VARS = {
    "conv1d": ["kernel", "bias"], "conv2d": ["kernel", "bias"], "conv3d": ["kernel", "bias"],
    "conv2d_transpose": ["kernel", "bias"], "dense": ["kernel", "bias"],
    "depthwise_conv2d": ["depthwise_kernel", "bias"],
    "separable_conv2d": ["depthwise_kernel", "pointwise_kernel", "bias"],
    "normalization": ["mean", "variance", "count"],
    "layer_normalization": ["gamma", "beta"],
}


def _keras_bn_names(n: int) -> list:
    # BatchNormalization: gamma (unless scale=False), beta (unless center=False), moving stats
    return {4: ["gamma", "beta", "moving_mean", "moving_variance"],
            3: ["beta", "moving_mean", "moving_variance"],
            2: ["moving_mean", "moving_variance"]}.get(n, [f"var{i}" for i in range(n)])


def _read_keras(path: Path) -> Checkpoint:
    try:
        import h5py
    except ImportError:
        raise CheckpointError(f"{path}: reading Keras HDF5 files needs h5py (pip install h5py)") from None
    try:
        with h5py.File(str(path), "r") as f:
            if "model_weights" in f or "layer_names" in f.attrs:
                return _read_keras_legacy(f, path)
            if "layers" in f:
                tensors, types = {}, {}
                _walk_keras3(f["layers"], tensors, types)
                if not tensors:
                    raise CheckpointError(f"{path}: a Keras weights file without weights")
                return Checkpoint(tensors, "keras", str(path), types)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read as a Keras HDF5 file: {type(e).__name__}: {e}") from None
    raise CheckpointError(f"{path}: an HDF5 file that is not a Keras weights file (no 'layers' or 'model_weights' group)")


def _walk_keras3(group, tensors, types):
    for key in group:                       # h5py lists groups sorted by name
        g = group[key]
        cls = re.sub(r"_\d+$", "", key)
        if "vars" in g and len(g["vars"]):
            v = g["vars"]
            name = v.attrs.get("name", key)
            name = name.decode() if isinstance(name, bytes) else str(name)
            n = len(v)
            leaves = _keras_bn_names(n) if cls == "batch_normalization" else list(_KERAS_VARS.get(cls, []))
            if cls in ("dense", "conv2d", "conv1d", "conv3d", "conv2d_transpose", "depthwise_conv2d") and n == 1:
                leaves = leaves[:1]
            if len(leaves) < n:
                leaves = [f"var{i}" for i in range(n)]
            for i in range(n):
                tensors[f"{name}.{leaves[i]}"] = np.asarray(v[str(i)])
            types[name] = cls
        if "layers" in g:                   # nested model
            _walk_keras3(g["layers"], tensors, types)


def _read_keras_legacy(f, path) -> Checkpoint:
    root = f["model_weights"] if "model_weights" in f else f
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in root.attrs.get("layer_names", list(root))]
    types = {}
    cfg = f.attrs.get("model_config")
    if cfg is not None:
        try:
            cfg = json.loads(cfg.decode() if isinstance(cfg, bytes) else cfg)
            for layer in cfg.get("config", {}).get("layers", []):
                types[layer["config"]["name"]] = layer["class_name"]
        except Exception:
            pass
    tensors = {}
    for lname in names:
        g = root[lname]
        wnames = [w.decode() if isinstance(w, bytes) else str(w) for w in g.attrs.get("weight_names", [])]
        for w in wnames:
            leaf = w.split("/")[-1].split(":")[0]
            if types.get(lname) == "DepthwiseConv2D" and leaf == "kernel":
                leaf = "depthwise_kernel"
            tensors[f"{lname}.{leaf}"] = np.asarray(g[w])
    if not tensors:
        raise CheckpointError(f"{path}: a Keras .h5 file without weights")
    return Checkpoint(tensors, "keras-legacy", str(path), types)
