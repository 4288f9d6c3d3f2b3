"""XLA:CPU's convolution on small spatial maps against archc's paths for them (compiler/lower.py
``_im2col``: the useful taps' slices concatenated, one product; ``_conv_im2col_grad``: lax's
forward, im2col's gradients), forward and forward+backward (the gradients of input and kernel),
swept over kernel 1/3/5/7, maps 1-16 and stride 1/2 with PyTorch-style padding (k-1)//2. Each
pair runs in this one process, alternating; a cell is the median over rounds of
time(lax.conv) / time(archc's path): > 1 means archc's path is faster. The candidate is the
path cpu_conv_path picks where it routes, else im2col (to show where routing would lose).

    .venv/bin/python bench/small_maps.py [--batch 8] [--channels 64 256] [--maps 1-16]
                                         [--json out.json] [--out BENCHMARKS.md]
    .venv/bin/python bench/small_maps.py --network resnet18 32 64   # before/after, vs PyTorch eager

The routing rule in archc.compiler.ops.conv.cpu_conv_path is derived from this table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import numpy as np
from jax import lax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import harness  # noqa: E402

from archc.compiler.lower import _cpu_conv  # noqa: E402
from archc.compiler.ops.conv import ConvAttrs, cpu_conv_path  # noqa: E402

BEGIN, END = "<!-- small_maps:begin -->", "<!-- small_maps:end -->"
ROUTED = ("im2col", "im2col_grad")


def functions(k: int, s: int, c: int, f: int, path: str):
    """(lax.conv, archc's `path`) as jitted forward and forward+backward functions of (x, w, ct)."""
    p = (k - 1) // 2
    attrs = ConvAttrs(f, (k, k), (s, s), ((p, p), (p, p)), (1, 1), 1, False)

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (s, s), [(p, p), (p, p)], dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def archc_path(x, w):
        return _cpu_conv(path, attrs, x, w)

    def both(fn):
        fwd = jax.jit(fn)
        grad = jax.jit(jax.grad(lambda x, w, ct: (fn(x, w) * ct).sum(), argnums=(0, 1)))
        return fwd, grad
    return both(conv), both(archc_path)


def timed(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def pair(a, b, args, rounds: int) -> dict:
    """Both compiled and run once, then `rounds` alternating calls; the first of each round
    alternates too so that neither always runs on a cache the other warmed."""
    first = max(timed(a, *args), timed(b, *args))
    if first > 0.5:
        rounds = max(3, rounds // 2)
    ta, tb = [], []
    for r in range(rounds):
        if r % 2:
            tb.append(timed(b, *args))
            ta.append(timed(a, *args))
        else:
            ta.append(timed(a, *args))
            tb.append(timed(b, *args))
    return {"lax_ms": 1e3 * statistics.median(ta), "archc_ms": 1e3 * statistics.median(tb),
            "ratio": statistics.median(x / y for x, y in zip(ta, tb))}


def sweep(batch: int, channels: list, maps: list, kernels: list, strides: list, rounds: int, kept: dict) -> list:
    """Each cell's candidate is the path the rule takes where it routes, else im2col (to show
    where it would lose); a cell in `kept` (an earlier run's rows) with that candidate is not
    measured again."""
    rows = []
    key = jax.random.key(0)
    for c in channels:
        for k in kernels:
            for s in strides:
                for n in maps:
                    row = {"channels": c, "kernel": k, "stride": s, "map": n}
                    path = routed(row)
                    path = path if path in ROUTED else "im2col"
                    old = kept.get((c, k, s, n))
                    if old is not None and old.get("candidate", "im2col") == path:
                        rows.append(dict(old, candidate=path))
                        continue
                    (conv_f, conv_g), (col_f, col_g) = functions(k, s, c, c, path)
                    kx, kw, kc = jax.random.split(jax.random.fold_in(key, n * 1000 + k * 10 + s), 3)
                    x = jax.random.normal(kx, (batch, n, n, c))
                    w = jax.random.normal(kw, (k, k, c, c)) / (k * np.sqrt(c))
                    y = conv_f(x, w)
                    ct = jax.random.normal(kc, y.shape)
                    row.update(out=y.shape[1], candidate=path, fwd=pair(conv_f, col_f, (x, w), rounds),
                               fwd_bwd=pair(conv_g, col_g, (x, w, ct), rounds))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def routed(r: dict) -> str | None:
    """The path archc's rule takes for a row (recomputed, so that a stored run renders with
    the rule as it is now)."""
    k, s, c, n = r["kernel"], r["stride"], r["channels"], r["map"]
    p = (k - 1) // 2
    return cpu_conv_path(ConvAttrs(c, (k, k), (s, s), ((p, p), (p, p)), (1, 1), 1, False), (1, n, n, c))


def render(res: dict) -> str:
    rows, maps = res["rows"], sorted({r["map"] for r in res["rows"]})
    L = [BEGIN, "## Small spatial maps: XLA:CPU's convolution vs im2col (`bench/small_maps.py`)", "",
         f"Run {res['date']}; {res['cpu']}, {res['cores']} cores, shared with other agents "
         f"(load average {res['load_start']:.1f} at the start, {res['load_end']:.1f} at the end; "
         f"hypervisor steal {res['steal']:.0f} %); jax {jax.__version__}, float32, batch {res['batch']}, "
         "C -> C channels, padding (k-1)//2.",
         "Each cell: median over alternating rounds (one process) of time(`lax.conv`) / time(archc's path); "
         "> 1: archc's path is faster. **Bold**: the cells `cpu_conv_path` routes (im2col where XLA would swap "
         "the forward convolution, im2col_grad -- lax forward, im2col's gradients -- where it would swap only a "
         "gradient's); elsewhere the candidate is im2col, to show where routing would lose. "
         "fwd = the convolution; f+b = the gradients of input and kernel of sum(conv * ct).", "",
         "| k | s | C | pass | " + " | ".join(str(m) for m in maps) + " |",
         "|---|---|---|---|" + "---|" * len(maps)]
    groups = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["stride"], r["channels"]), {})[r["map"]] = r
    for (k, s, c), by_map in sorted(groups.items()):
        for part, label in (("fwd", "fwd"), ("fwd_bwd", "f+b")):
            cells = []
            for m in maps:
                r = by_map.get(m)
                if r is None:
                    cells.append("")
                    continue
                v = f"{r[part]['ratio']:.2f}" if r[part]["ratio"] < 10 else f"{r[part]['ratio']:.0f}"
                cells.append(f"**{v}**" if routed(r) in ROUTED else v)
            L.append(f"| {k} | {s} | {c} | {label} | " + " | ".join(cells) + " |")
    slow = sorted((r for r in rows if routed(r) in ROUTED), key=lambda r: -r["fwd"]["lax_ms"])[:5]
    if slow:
        L += ["", "Slowest routed cases, lax.conv -> im2col (ms, forward; forward+backward): "
              + "; ".join(f"k{r['kernel']} s{r['stride']} C{r['channels']} {r['map']}x{r['map']}: "
                          f"{r['fwd']['lax_ms']:.1f} -> {r['fwd']['archc_ms']:.1f}, "
                          f"{r['fwd_bwd']['lax_ms']:.1f} -> {r['fwd_bwd']['archc_ms']:.1f}" for r in slow) + "."]
    L.append(END)
    return "\n".join(L)


def network(net: str, batch: int, size: int, rounds: int) -> dict:
    """Inference images/s of `net` at size x size: archc with the small-map routing ('after'),
    archc with it turned off in this process ('before': lax's convolution where the rule would
    route), and torchvision's twin in PyTorch eager (2 threads), alternating; medians."""
    import torch
    import torchvision

    import archc
    from archc.compiler import lower
    routed_path = lower._cpu_conv_path

    def unrouted(a, x):
        path = routed_path(a, x)
        return None if path in ("im2col", "im2col_grad") else path

    model = archc.load(net, input_shape=(size, size, 3))
    variables = model.init(seed=0)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
    after = jax.jit(lambda v, x: model.apply_fn(v, x))
    lower._cpu_conv_path = unrouted
    try:
        before = jax.jit(lambda v, x: model.apply_fn(v, x)).lower(variables, x).compile()
    finally:
        lower._cpu_conv_path = routed_path
    after = after.lower(variables, x).compile()
    diff = float(jax.numpy.max(jax.numpy.abs(after(variables, x) - before(variables, x))))
    routed = sum(1 for node in model.graph if node.op == "conv"
                 and cpu_conv_path(node.attrs, (1,) + tuple(model.graph.nodes[node.inputs[0]].shape)) in ("im2col", "im2col_grad"))
    torch.set_num_threads(2)
    tmodel = getattr(torchvision.models, net)(weights=None).eval()
    xt = torch.randn(batch, 3, size, size)

    def eager():
        with torch.inference_mode():
            return tmodel(xt)
    runs = {"before": lambda: before(variables, x), "after": lambda: after(variables, x), "torch_eager": eager}
    times = {k: [] for k in runs}
    for fn in runs.values():
        jax.block_until_ready(fn())
    for r in range(rounds):
        for k in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            times[k].append(timed(runs[k]))
    swapped = {k: sum(" convolution(" in line and "rhs_reversal" in line for line in c.as_text().splitlines())
               for k, c in (("before", before), ("after", after))}
    return {"net": net, "batch": batch, "size": size, "routed_convs": routed, "max_abs_diff": diff,
            "swapped_convs_in_hlo": swapped,
            "img_s": {k: batch / statistics.median(v) for k, v in times.items()},
            "after_over_before": statistics.median(b / a for a, b in zip(times["after"], times["before"])),
            "after_over_eager": statistics.median(e / a for a, e in zip(times["after"], times["torch_eager"]))}


def write(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    new = (old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):] if BEGIN in old and END in old
           else old.rstrip() + "\n\n" + text + "\n")
    path.write_text(new)


def span(text: str) -> list:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--kernels", type=int, nargs="+", default=[1, 3, 5, 7])
    ap.add_argument("--strides", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--maps", default="1-16", help="a range lo-hi of map sizes")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--out", type=Path, help="write the table into this markdown file (between markers)")
    ap.add_argument("--from-json", type=Path, help="render a previous run's JSON instead of measuring")
    ap.add_argument("--keep", type=Path, help="rows of an earlier run (a JSON list) not to measure again")
    ap.add_argument("--network", nargs=3, metavar=("NET", "BATCH", "SIZE"),
                    help="instead of the sweep: NET's inference before/after the routing and vs PyTorch eager")
    a = ap.parse_args()
    if a.network:
        load0 = harness.load1()
        res = network(a.network[0], int(a.network[1]), int(a.network[2]), a.rounds)
        res.update(cpu=harness.cpu_model(), load_start=load0, load_end=harness.load1())
        print(json.dumps(res, indent=1))
        return
    if a.from_json:
        res = json.loads(a.from_json.read_text())
    else:
        cpu0, load0 = harness.cpu_jiffies(), harness.load1()
        kept = {}
        if a.keep:
            for r in json.loads(a.keep.read_text()):
                for part in ("fwd", "fwd_bwd"):       # runs before the candidate was named
                    r[part].setdefault("archc_ms", r[part].pop("im2col_ms", None))
                kept[(r["channels"], r["kernel"], r["stride"], r["map"])] = r
        rows = sweep(a.batch, a.channels, span(a.maps), a.kernels, a.strides, a.rounds, kept)
        res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": harness.cpu_model(),
               "cores": harness.os.cpu_count(), "batch": a.batch, "load_start": load0, "load_end": harness.load1(),
               "steal": harness.steal_pct(cpu0, harness.cpu_jiffies()), "rows": rows}
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
    text = render(res)
    print(text)
    if a.out:
        write(a.out, text)


if __name__ == "__main__":
    main()
