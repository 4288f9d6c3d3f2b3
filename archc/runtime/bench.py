"""Inference benchmark of one model: XLA compile time, throughput, peak memory.

Used by `archc bench` and by the harness in bench/. Warm-up is excluded; throughput is the median
of several timed runs, each of several iterations, with block_until_ready.
"""
from __future__ import annotations

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..compiler.lower import compute_dtype


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_forward(fn, variables, x):
    """jit, lower and compile fn(variables, x); returns (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(variables, x).compile()
    return compiled, time.perf_counter() - t0


def time_compiled(compiled, variables, x, iters: int = 5, repeats: int = 5, warmup: int = 2) -> float:
    """Median images/s of compiled(variables, x) over `repeats` runs of `iters` calls."""
    for _ in range(warmup):
        jax.block_until_ready(compiled(variables, x))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = compiled(variables, x)
        jax.block_until_ready(out)
        rates.append(iters * x.shape[0] / (time.perf_counter() - t0))
    return statistics.median(rates)


def onnx_forward(model, variables, layout: str = "nchw"):
    """archc's ONNX export of ``model`` on an ONNX Runtime CPU session: (forward, seconds to
    export and create the session); ``forward(x)`` takes a float32 batch in ``layout`` ('nhwc':
    archc's own interface, feature-map outputs NHWC too) and returns the list of outputs."""
    from .export import export, onnx_session
    t0 = time.perf_counter()
    session = onnx_session(export(model, variables, format="onnx", layout=layout))
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x})), time.perf_counter() - t0


def onnx_runner(model, variables, x):
    """archc's ONNX export of ``model`` (NCHW) on an ONNX Runtime CPU session: (run, seconds to
    export and create the session); ``run(v, x)`` takes archc's NHWC batch, as a compiled
    forward does, and returns the outputs."""
    forward, seconds = onnx_forward(model, variables)
    nchw = np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))
    return (lambda v, x: forward(nchw)), seconds


def bench_model(model, batch: int = 1, iters: int = 5, repeats: int = 5, dtype=None, backend: str = "xla") -> dict:
    """``dtype``: the compute dtype of the mixed-precision policy ('bfloat16'), None for float32;
    ``backend``: 'xla' (archc's compiled program) or 'onnxruntime' (its ONNX export)."""
    variables = model.init(seed=0)
    x = jnp.ones((batch,) + tuple(model.input_shape), jnp.float32)

    def forward(v, x):
        return model.apply_fn(v, x, dtype=dtype)

    if backend == "onnxruntime":
        compiled, compile_s = onnx_runner(model, variables, x)
    else:
        compiled, compile_s = compile_forward(forward, variables, x)
    ips = time_compiled(compiled, variables, x, iters=iters, repeats=repeats)
    return {
        "name": model.name,
        "batch": batch,
        "input_shape": list(model.input_shape),
        "compile_s": round(compile_s, 3),
        "images_per_s": round(ips, 2),
        "dtype": jnp.dtype(compute_dtype(dtype) or jnp.float32).name,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "device": str(jax.devices()[0]) if backend == "xla" else "onnxruntime CPUExecutionProvider",
        "backend": backend,
    }
