"""Snapshot every built-in's IR, counts, variables and lowered StableHLO, or compare two snapshots.

    python scripts/snapshot_builtins.py write before.json      # at the old commit
    python scripts/snapshot_builtins.py write after.json       # at the new one
    python scripts/snapshot_builtins.py compare before.json after.json [--ignore-spans]

The refactors of the compiler promise "the same names, ops, attributes, shapes, counts and
programs for every built-in"; this is the check. StableHLO is hashed with source locations
stripped (they name Python files and lines, which a refactor moves), in eval and train mode.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys

_LOC = re.compile(r"\s*loc\([^\n]*?\)(?=\s*$)|#loc\d*\s*=.*$", re.M)


def _hlo_hash(text: str) -> str:
    lines = [l for l in (_LOC.sub("", line) for line in text.splitlines()) if l.strip()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def snapshot(names=None) -> dict:
    import jax
    import jax.numpy as jnp
    import archc
    from archc.compiler import library
    from archc.compiler.build import build_graph
    from archc.compiler.stats import summarize
    from archc.runtime.model import Model

    out = {}
    for name in names or library.names():
        graph = build_graph(name)
        model = Model(graph)
        ir = graph.to_json()
        summary = summarize(graph)
        specs = [list(map(lambda x: list(x) if isinstance(x, tuple) else x, v)) for v in model.variable_specs]
        abstract = jax.eval_shape(lambda: model.init(0))
        xs = tuple(jax.ShapeDtypeStruct((2,) + tuple(graph[n].shape), jnp.float32) for n in graph.inputs)
        x = xs[0] if len(xs) == 1 else xs
        key = jax.random.PRNGKey(0)
        eval_hlo = jax.jit(lambda v, x: model.apply_fn(v, x)).lower(abstract, x).as_text(debug_info=False)
        train_hlo = jax.jit(lambda v, x, k: model.apply_fn(v, x, train=True, rngs=k)).lower(abstract, x, key).as_text(debug_info=False)
        out[name] = {"ir": ir, "summary": summary, "variables": specs,
                     "hlo_eval": _hlo_hash(eval_hlo), "hlo_train": _hlo_hash(train_hlo)}
        print(f"{name}: {len(graph.nodes)} nodes", file=sys.stderr, flush=True)
    return out


def _without_spans(entry: dict) -> dict:
    """The entry with source positions dropped (a reformatted file moves them)."""
    ir = {**entry["ir"], "nodes": [{k: v for k, v in n.items() if k != "span"} for n in entry["ir"]["nodes"]]}
    return {**entry, "ir": ir}


def compare(a: dict, b: dict, ignore_spans: bool = False) -> int:
    bad = 0
    for name in sorted(set(a) - set(b)):
        print(f"{name}: only in the first")
        bad += 1
    if set(b) - set(a):
        print(f"{len(set(b) - set(a))} networks only in the second (new): {', '.join(sorted(set(b) - set(a)))}")
    for name in sorted(set(a) & set(b)):
        if ignore_spans:
            a[name], b[name] = _without_spans(a[name]), _without_spans(b[name])
        diffs = [k for k in a[name] if a[name][k] != b[name].get(k)]
        if diffs:
            bad += 1
            print(f"{name}: differs in {', '.join(diffs)}")
    print(f"{len(set(a) & set(b))} networks compared, {bad} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "write":
        names = sys.argv[3:] or None
        with open(sys.argv[2], "w") as f:
            json.dump(snapshot(names), f)
    else:
        sys.exit(compare(json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), "--ignore-spans" in sys.argv[4:]))
