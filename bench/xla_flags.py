"""XLA:CPU flags of the installed jaxlib against archc's networks: for each flag setting, in its
own process (XLA_FLAGS is read once per process), the compiled program's fingerprint (which
library fusions and custom calls it has, a hash of its optimised HLO), the time per call and
the outputs; settings alternate over rounds, medians. A setting whose optimised HLO equals the
default's compiles the same program and is reported as such, not timed.

    .venv/bin/python bench/xla_flags.py [--nets resnet50:infer:8 resnet18:train:8] [--rounds 3]
    .venv/bin/python bench/xla_flags.py --list      # the flags this jaxlib accepts (XLA_FLAGS parse check)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import harness  # noqa: E402

# Convolution-relevant settings (names from `strings` on jaxlib 0.10.2's libjax_common.so; each
# parses -- `--list` checks). YNN fusion types: dot, eltwise, reduce, individual_dot,
# individual_convolution (LIBRARY_FUSION_TYPE_*); the default takes convolutions into YNNPACK.
SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "onednn_fusion": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise",
    "ynn_off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn_all": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce,individual_dot,individual_convolution",
    "xnn_greedy": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "no_thunks": "--xla_cpu_use_thunk_runtime=false",
    "no_fusion_emitters": "--xla_cpu_use_fusion_emitters=false",
}
FLAGS = sorted({f.split("=")[0].lstrip("-") for v in SETTINGS.values() for f in v.split()})


def worker(net: str, mode: str, batch: int, calls: int, out: str) -> None:
    """One setting (from XLA_FLAGS): compile, fingerprint, time `calls` calls, save outputs."""
    import jax
    import numpy as np
    import optax

    import archc
    size = 64 if net == "resnet18" and mode == "train" else None
    model = archc.load(net, input_shape=(size, size, 3)) if size else archc.load(net)
    variables = model.init(seed=0)
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((batch,) + tuple(model.input_shape), np.float32))
    if mode == "infer":
        fn = jax.jit(lambda v, x: model.apply_fn(v, x))
        args = (variables, x)
    else:
        y = jax.numpy.asarray(rng.integers(0, model.output_shape[-1], batch))

        def loss(params, x, y):
            logits, _ = model.apply_fn({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        fn = jax.jit(jax.value_and_grad(loss))
        args = (variables["params"], x, y)
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    result = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    leaves = [np.asarray(v) for v in jax.tree.leaves(result)]
    np.savez(out, *leaves)
    print(json.dumps({"compile_s": compile_s, "s_per_call": statistics.median(times),
                      "hlo": hashlib.sha1(re.sub(r", metadata=\{[^}]*\}", "", text).encode()).hexdigest()[:12],
                      "fusions": sorted(set(re.findall(r'"kind":"(__[a-z_]+)"', text))),
                      "custom_calls": sorted(set(re.findall(r'custom_call_target="([^"]+)"', text)))}))


def run_setting(name, net, mode, batch, calls, tmp) -> dict:
    out = str(Path(tmp) / f"{net}_{mode}_{name}.npz")
    env = dict(os.environ, XLA_FLAGS=SETTINGS[name], PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, __file__, "--worker", net, mode, str(batch), str(calls), out],
                       env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return dict(json.loads(p.stdout.strip().splitlines()[-1]), out=out)


def max_diff(a: str, b: str) -> float:
    import numpy as np
    x, y = np.load(a), np.load(b)
    return max(float(np.max(np.abs(x[k] - y[k]))) for k in x.files)


def parses(flag_setting: str) -> bool:
    env = dict(os.environ, XLA_FLAGS=flag_setting)
    p = subprocess.run([sys.executable, "-c", "import jax.numpy as j; j.ones(1).block_until_ready()"],
                       env=env, capture_output=True, text=True)
    return p.returncode == 0


def render(results: list) -> str:
    """A markdown table: per network, each setting's speed vs default (or 'same program'), the
    largest output difference, and the library fusions in the compiled program."""
    L = ["| network | setting | XLA_FLAGS | vs default | max abs diff | fusions / custom calls |", "|---|---|---|---|---|---|"]
    for row in results:
        name = f"{row['net']} {row['mode']} b{row['batch']}"
        for s, e in row["settings"].items():
            if "error" in e:
                L.append(f"| {name} | {s} | `{SETTINGS[s]}` | error: {e['error'][:80]} | | |")
                continue
            speed = f"{e['vs_default']:.2f}×" if "vs_default" in e else "same program"
            libs = ", ".join(e["fusions"] + e["custom_calls"]) or "none"
            L.append(f"| {name} | {s} | `{SETTINGS[s] or '(none)'}` | {speed} | {e['max_abs_diff']:.1e} | {libs} |")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["resnet50:infer:8", "mobilenet_v2:infer:8",
                                                  "efficientnet_b0:infer:8", "resnet18:train:8"])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3, help="timed calls per process (median)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--from-rows", type=Path, help="render the JSON rows a run printed (one a line)")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        net, mode, batch, calls, out = a.worker
        worker(net, mode, int(batch), int(calls), out)
        return
    if a.from_rows:
        print(render([json.loads(line) for line in a.from_rows.read_text().splitlines() if line.startswith("{")]))
        return
    if a.list:
        for flag in FLAGS:
            value = next(f.split("=", 1)[1] for v in SETTINGS.values() for f in v.split() if f.lstrip("-").startswith(flag + "="))
            print(f"--{flag}={value}: {'accepted' if parses(f'--{flag}={value}') else 'REJECTED'}")
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.nets:
            net, mode, batch = spec.split(":")
            load0 = harness.load1()
            first = {s: run_setting(s, net, mode, int(batch), a.calls, tmp) for s in a.settings}
            base = first["default"]
            timed = [s for s in a.settings if "error" not in first[s] and (s == "default" or first[s]["hlo"] != base["hlo"])]
            runs = {s: [first[s]["s_per_call"]] for s in timed}
            for r in range(1, a.rounds):
                for s in (timed if r % 2 else timed[::-1]):
                    res = run_setting(s, net, mode, int(batch), a.calls, tmp)
                    if "error" not in res:
                        runs[s].append(res["s_per_call"])
            row = {"net": net, "mode": mode, "batch": int(batch), "load": [load0, harness.load1()], "settings": {}}
            for s in a.settings:
                f = first[s]
                if "error" in f:
                    row["settings"][s] = {"error": f["error"]}
                    continue
                entry = {"fusions": f["fusions"], "custom_calls": f["custom_calls"], "same_hlo": f["hlo"] == base["hlo"],
                         "max_abs_diff": max_diff(f["out"], base["out"])}
                if s in runs:
                    entry["s_per_call"] = statistics.median(runs[s])
                    entry["vs_default"] = statistics.median(runs["default"]) / entry["s_per_call"]
                row["settings"][s] = entry
            results.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"cpu": harness.cpu_model(), "results": results}, indent=1))
    print(render(results))


if __name__ == "__main__":
    main()
