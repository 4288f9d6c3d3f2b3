"""``--backend auto``: CPU inference through whichever engine is faster for this network and batch,
archc's XLA program or its ONNX export on ONNX Runtime, measured at first use and cached per machine.

The choice is measured once per (CPU model, network, batch, dtype, archc/jax/onnxruntime versions):
both engines run the network on the same random batch, alternating, and ONNX Runtime is chosen only
when it is faster *and* its outputs equal XLA's (``agree``); the cache is a small JSON file,
``$ARCHC_CACHE_DIR`` or ``$XDG_CACHE_HOME/archc`` or ``~/.cache/archc``, ``backend_choice.json``.
XLA runs everything that ONNX Runtime would not run the same way: a GPU, a bfloat16/float16
policy, a network with several outputs, an export that fails (with a one-line note).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ENGINES = ("xla", "onnxruntime")
CACHE_FILE = "backend_choice.json"
# ONNX Runtime's outputs must equal XLA's within this (absolute, scaled by the outputs' size when
# they exceed 1): float32 engines that sum in other orders differ by ~1e-6 relative.
AGREE_TOL = 1e-4


@dataclasses.dataclass
class Choice:
    engine: str                            # 'xla' or 'onnxruntime'
    images_per_s: dict                     # engine -> measured img/s (empty when nothing was measured)
    batch: int
    cached: bool = False                   # read from the cache, not measured now
    note: str | None = None                # why XLA runs although ONNX Runtime was asked about

    def line(self) -> str:
        """The one line the commands print."""
        ips, why = self.images_per_s, [self.note] if self.note else []
        if len(ips) == 2:
            other = "onnxruntime" if self.engine == "xla" else "xla"
            why.append(f"{ips[self.engine]:.1f} img/s vs {other}'s {ips[other]:.1f} at batch {self.batch}")
        if self.cached:
            why.append(f"measured earlier, cached in {cache_path()}")
        return f"backend: {self.engine}" + (f" ({'; '.join(why)})" if why else "")

    def to_json(self) -> dict:
        return {"engine": self.engine, "images_per_s": self.images_per_s, "batch": self.batch,
                "note": self.note}


def cache_path() -> Path:
    root = os.environ.get("ARCHC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "archc")
    return Path(root) / CACHE_FILE


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "none"


def network_digest(model) -> str:
    """The network's identity beyond its name: every node's op, inputs, shape and attributes."""
    graph = model.graph
    text = json.dumps([graph.inputs, graph.outputs] + [{k: v for k, v in n.to_json().items() if k != "span"}
                                                       for n in graph], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(model, batch: int, dtype: str = "float32") -> str:
    return "|".join([cpu_model(), f"{model.name} {network_digest(model)}", f"batch {batch}", dtype,
                     f"archc {_version('archc')}", f"jax {_version('jax')}", f"onnxruntime {_version('onnxruntime')}"])


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}                                # none yet, or unreadable: measured again and rewritten


def _write_cache(path: Path, key: str, entry: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass                                     # a read-only home: measured again next time


def agree(a: np.ndarray, b: np.ndarray, tol: float = AGREE_TOL) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(1.0, float(np.max(np.abs(a), initial=0.0)))
    return a.shape == b.shape and float(np.max(np.abs(a - b), initial=0.0)) <= tol * scale


def _xla_only(model, dtype) -> str | None:
    """Why ONNX Runtime is not a candidate here, or None."""
    import jax
    if jax.default_backend() != "cpu":
        return f"XLA on {jax.default_backend()}"
    if dtype not in (None, "float32"):
        return f"{dtype} compute runs on XLA only"
    if len(model.graph.outputs) != 1 or len(model.graph.inputs) != 1:
        return "a network of several inputs or outputs runs on XLA only"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed"
    return None


def measure(model, variables, batch: int, repeats: int = 3, min_s: float = 0.2) -> Choice:
    """Time both engines on one random batch, alternating; ONNX Runtime wins only if faster and
    its outputs agree with XLA's."""
    import jax
    x = np.random.default_rng(0).standard_normal((batch,) + tuple(model.input_shape)).astype(np.float32)
    y_xla = np.asarray(model.apply(variables, x))      # model.apply's compiled program, reused after
    try:
        ort = onnxruntime_forward(model, variables)
        y_ort = ort(x)
    except Exception as e:  # noqa: BLE001 - any export or session failure: XLA runs it
        return Choice("xla", {}, batch, note=_export_failed(e))
    if not agree(y_xla, y_ort):
        diff = float(np.max(np.abs(np.asarray(y_xla, np.float64) - y_ort)))
        return Choice("xla", {}, batch, note=f"ONNX Runtime's outputs differ from XLA's by {diff:.2g}: using XLA")
    runs = {"xla": lambda: jax.block_until_ready(model.apply(variables, x)), "onnxruntime": lambda: ort(x)}
    calls = {}
    for name, run in runs.items():               # calls per timing: ~min_s worth, at least 1
        t0 = time.perf_counter()
        run()
        calls[name] = max(1, int(min_s / max(time.perf_counter() - t0, 1e-4)))
    times = {name: [] for name in runs}
    for r in range(repeats):
        for name in (ENGINES if r % 2 == 0 else ENGINES[::-1]):
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                runs[name]()
            times[name].append((time.perf_counter() - t0) / calls[name])
    ips = {name: round(batch / statistics.median(ts), 2) for name, ts in times.items()}
    return Choice(max(ips, key=ips.get), ips, batch)


def choose(model, variables, batch: int, dtype=None) -> Choice:
    """The engine for ``model`` at ``batch``: from the cache, else measured (and cached)."""
    why = _xla_only(model, dtype)
    if why is not None:
        return Choice("xla", {}, batch, note=why)
    path, key = cache_path(), cache_key(model, batch, "float32")
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and entry.get("engine") in ENGINES:
        return Choice(entry["engine"], dict(entry.get("images_per_s") or {}), batch, cached=True,
                      note=entry.get("note"))
    choice = measure(model, variables, batch)
    _write_cache(path, key, {**choice.to_json(), "measured": time.strftime("%Y-%m-%d %H:%M:%S")})
    return choice


def onnxruntime_forward(model, variables):
    """``forward(x)`` -> the primary output, through the ONNX export on ONNX Runtime (NHWC)."""
    from .bench import onnx_forward
    forward, _ = onnx_forward(model, variables, layout="nhwc")
    return lambda x: forward(np.ascontiguousarray(x, np.float32))[0]


class AutoModel:
    """``model`` whose inference ``apply`` runs on the engine ``choose`` picks, at the first call
    (whose batch it is measured at): what ``archc predict`` and ``segment`` run. Calls that ONNX
    Runtime would not run as XLA does (training, named outputs, a dtype, another input size) go
    to the model's own ``apply``. ``choice`` (and ``line()``) say which engine ran."""

    def __init__(self, model):
        self._model, self._forward, self.choice = model, None, None

    def __getattr__(self, name):
        return getattr(self._model, name)

    def line(self) -> str | None:
        return self.choice.line() if self.choice is not None else None

    def apply(self, variables, x, train: bool = False, outputs=None, dtype=None, **kw):
        x = np.asarray(x)
        plain = not (train or outputs is not None or dtype is not None or kw)
        if self.choice is None:
            if not plain:
                self.choice = Choice("xla", {}, len(x), note="named outputs or training run on XLA only")
            elif tuple(x.shape[1:]) != tuple(self._model.input_shape):
                self.choice = Choice("xla", {}, len(x), note=f"inputs of {'x'.join(map(str, x.shape[1:]))}, "
                                     "not the network's own size, run on XLA only")
            else:
                self._engine(variables, len(x))
        if plain and self._forward is not None and tuple(x.shape[1:]) == tuple(self._model.input_shape):
            return self._forward(x)
        return self._model.apply(variables, x, train=train, outputs=outputs, dtype=dtype, **kw)

    def _engine(self, variables, batch: int) -> None:
        self.choice = choose(self._model, variables, batch)
        if self.choice.engine == "onnxruntime":
            try:
                self._forward = onnxruntime_forward(self._model, variables)
            except Exception as e:  # noqa: BLE001 - cached as chosen, fails now: XLA, with a note
                self.choice = dataclasses.replace(self.choice, engine="xla", note=_export_failed(e))


def _export_failed(e: Exception) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    return f"the ONNX export failed, so XLA runs it: {first}"
