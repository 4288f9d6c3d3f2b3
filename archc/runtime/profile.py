"""Where the time goes: a per-kernel profile of one compiled forward pass, named by IR node.

XLA compiles the model into a sequence of kernels ("thunks"), most of them fusions of several
IR nodes (a conv with its BN and ReLU). `profile_model` runs the compiled program under the JAX
profiler with XLA's per-thunk trace events switched on, sums each thunk's time, and names it by
the IR nodes fused into it (lowering wraps every node in ``jax.named_scope(node.name)``, so the
HLO metadata carries the names). Used by ``archc bench SPEC --profile``.

CPU only: on GPU the trace holds device kernels, whose names do not map back to HLO the same way.
"""
from __future__ import annotations

import gzip
import json
import re
import tempfile
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from archc.compiler.ops import OPS

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) [\w\-]+\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def _parse_hlo(text: str):
    """(entry instruction -> (op_names, called computations, result shape),
        computation -> (op_names, called computations))."""
    entry, comps, current, in_entry = {}, {}, None, False
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header and "{" in line:
            current, in_entry = header.group(1), line.startswith("ENTRY")
            comps[current] = (set(), set())
            continue
        m = _INSTR.match(line)
        if m is None or current is None:
            continue
        op = _OP_NAME.search(line)
        names, calls = ({op.group(1)} if op else set()), set(_CALLS.findall(line))
        if in_entry:
            entry[m.group(1)] = (names, calls, m.group(2))
        else:
            comps[current][0].update(names)
            comps[current][1].update(calls)
    return entry, comps


def _reachable_op_names(comps, calls, seen) -> set:
    out = set()
    for c in calls - seen:
        seen.add(c)
        names, inner = comps.get(c, (set(), set()))
        out |= names | _reachable_op_names(comps, inner, seen)
    return out


def thunk_nodes(hlo_text: str, node_names) -> dict[str, tuple[list[str], str]]:
    """Entry instruction (thunk) name -> (IR nodes it computes, in graph order; result shape)."""
    order = {n: i for i, n in enumerate(node_names)}
    entry, comps = _parse_hlo(hlo_text)
    result = {}
    for instr, (names, calls, shape) in entry.items():
        nodes = set()
        for op_name in names | _reachable_op_names(comps, calls, set()):
            node = next((part for part in op_name.split("/") if part in order), None)
            if node is not None:
                nodes.add(node)
        result[instr] = (sorted(nodes, key=order.__getitem__), shape)
    return result


def _trace_events(logdir: Path) -> list[dict]:
    files = sorted(logdir.rglob("*.trace.json.gz"))
    if not files:
        raise RuntimeError(f"the JAX profiler wrote no trace under {logdir}")
    data = json.loads(gzip.open(files[-1]).read())
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def profile_model(model, batch: int = 1, runs: int = 3, variables=None, dtype=None) -> dict:
    """Profile ``model``'s inference forward pass at ``batch``. Returns a dict with the wall time
    per call, the summed kernel time per call, and ``kernels`` (one row per thunk: ms per call,
    IR op kind, IR nodes, result shape) and ``by_op`` (ms per IR op kind), heaviest first."""
    if jax.default_backend() != "cpu":
        raise RuntimeError(f"profile: only the CPU backend is supported (this is {jax.default_backend()})")
    variables = model.init(seed=0) if variables is None else variables
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch,) + tuple(model.input_shape), np.float32))
    compiled = jax.jit(partial(model.apply_fn, dtype=dtype)).lower(variables, x).compile(
        compiler_options={"xla_cpu_enable_xprof_traceme": True})
    jax.block_until_ready(compiled(variables, x))                 # warm-up
    names = thunk_nodes(compiled.as_text(), list(model.graph.nodes))
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            t0 = time.perf_counter()
            for _ in range(runs):
                jax.block_until_ready(compiled(variables, x))
            wall = (time.perf_counter() - t0) / runs
        events = _trace_events(Path(tmp))
    total = defaultdict(float)
    for e in events:
        if e["name"] in names:
            total[e["name"]] += e.get("dur", 0.0) / 1e3 / runs       # µs -> ms per call
    ops = {n.name: n.op for n in model.graph}
    rows, by_op = [], defaultdict(float)
    for thunk, ms in sorted(total.items(), key=lambda kv: -kv[1]):
        nodes, shape = names[thunk]
        kinds = {ops[n] for n in nodes}
        kind = kernel_op(kinds)
        rows.append({"kernel": thunk, "ms": ms, "op": kind, "nodes": nodes, "shape": shape})
        by_op[kind] += ms
    kernel_ms = sum(total.values())
    return {
        "name": model.name, "batch": batch, "runs": runs, "device": str(jax.devices()[0]),
        "wall_ms": wall * 1e3, "kernel_ms": kernel_ms,
        "kernels": rows,
        "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
    }


def kernel_op(kinds: set) -> str:
    """The IR op that names a fused kernel: the most expensive kind of op inside it (the lowest
    ``OpDef.profile_rank``), else the first by name."""
    ranked = [k for k in kinds if OPS[k].profile_rank is not None]
    if ranked:
        return min(ranked, key=lambda k: OPS[k].profile_rank)
    return min(kinds) if kinds else "(copy/other)"


def describe_nodes(nodes: list[str], limit: int = 4) -> str:
    """'layer1.0.conv1 +bn1 +relu1': later nodes shortened to what differs from the first."""
    if not nodes:
        return "-"
    first = nodes[0]
    prefix = first.rsplit(".", 1)[0] + "." if "." in first else ""
    rest = [("+" + n[len(prefix):]) if prefix and n.startswith(prefix) else ("+" + n) for n in nodes[1:]]
    more = f" (+{len(rest) - limit} more)" if len(rest) > limit else ""
    return " ".join([first] + rest[:limit]) + more


def render_profile(p: dict, top: int = 20) -> str:
    lines = [f"{p['name']}: batch {p['batch']} on {p['device']}: {p['wall_ms']:.1f} ms per call "
             f"(kernels {p['kernel_ms']:.1f} ms; kernels may overlap on several cores)", "",
             f"{'ms':>9} {'share':>6}  {'op':<14} {'shape':<26} IR nodes"]
    for r in p["kernels"][:top]:
        share = r["ms"] / p["kernel_ms"] if p["kernel_ms"] else 0.0
        lines.append(f"{r['ms']:9.2f} {share:6.1%}  {r['op']:<14} {r['shape'][:26]:<26} {describe_nodes(r['nodes'])}")
    if len(p["kernels"]) > top:
        rest = sum(r["ms"] for r in p["kernels"][top:])
        lines.append(f"{rest:9.2f} {rest / p['kernel_ms']:6.1%}  ({len(p['kernels']) - top} more kernels)")
    lines += ["", "by IR op (a fused kernel counts under its most expensive op):"]
    for kind, ms in p["by_op"].items():
        lines.append(f"{ms:9.2f} {ms / p['kernel_ms']:6.1%}  {kind}")
    return "\n".join(lines)
