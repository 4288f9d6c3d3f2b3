"""One-command performance harness: archc vs its peers on this machine -> BENCHMARKS.md.

    python bench/harness.py [--quick] [--out BENCHMARKS.md] [--nets resnet50 ...] [--no-wait]

Measures, per network (archc built-ins resnet50, densenet121, mobilenet_v2, efficientnet_b0,
inception_v3) and batch (1, 32): inference throughput, compile time and RSS increase for archc
(plain and BN-folded), the hand-written Flax ResNet-50, torchvision eager, torch.compile, ONNX
Runtime and Keras Applications (JAX backend); the `archc build densenet121` front-end time vs
Keras DenseNet121 construction; the training step of ResNet-50 and MobileNetV2 (archc/optax vs
PyTorch eager; --train-nets); and
ResNet-50's achieved FLOP/s against this CPU's float32 matmul peak.

Each network runs in its own subprocess (so memory figures and caches do not leak between
networks); inside it every framework is set up, compiled and warmed up in turn, then the timed
runs are interleaved (framework order rotating run by run) so load drifts hit all alike.
Before each subprocess the harness waits (poll 30 s) until the 1-minute load average is below
--max-load and the hypervisor's steal (/proc/stat, over 5 s) below --max-steal %, and records
the load and steal it ran under. `--quick`: resnet50 at batch 32 + build timing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
NETS = ["resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "inception_v3"]
MARK = "@@RESULT "
BEGIN, END = "<!-- harness:begin -->", "<!-- harness:end -->"


def load1() -> float:
    return os.getloadavg()[0]


def cpu_jiffies() -> list:
    """(steal, total) CPU jiffies since boot from /proc/stat: the share of time the hypervisor
    gave this VM's cores to others (steal) between two readings is the noise floor of a timing."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return [0, 0]
    return [fields[7] if len(fields) > 7 else 0, sum(fields)]


def steal_pct(start, end) -> float:
    d_total = end[1] - start[1]
    return 100.0 * (end[0] - start[0]) / d_total if d_total > 0 else 0.0


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_gib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20     # KiB on Linux


class PeakRSS:
    """Samples this process's resident set every 5 ms in a thread: peak increase over a window."""

    def __enter__(self):
        self.base = self.peak = rss_mib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _loop(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mib())
        self.increase = self.peak - self.base


def emit(obj):
    print(MARK + json.dumps(obj), flush=True)


# ============================================================ workers (run in subprocesses)

def worker_net(net: str, batches: list[int], runs32: int, runs1: int, only=None):
    import gc
    import jax
    jax.config.update("jax_enable_compilation_cache", False)
    from peers import runners
    out = {"net": net, "load_start": load1(), "cpu_start": cpu_jiffies(), "frameworks": {}, "batches": batches}
    rs = runners(net, only)
    prepared = {}
    for r in rs:
        gc.collect()
        info = {"compile_s": {}, "first_call_s": {}}
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            r.setup()
            info["setup_s"] = time.perf_counter() - t0
            for b in batches:
                if b not in getattr(r, "batches", batches):
                    continue
                secs, run = r.prepare(b)
                t0 = time.perf_counter()
                run()                                   # warm-up
                info["first_call_s"][b] = time.perf_counter() - t0
                run()
                info["compile_s"][b] = secs
                prepared[(r.name, b)] = run
        info["rss_increase_mib"] = mem.increase
        for k in ("export_s", "session_s"):
            if hasattr(r, k):
                info[k] = getattr(r, k)
        out["frameworks"][r.name] = info
        print(f"[{net}] {r.name}: setup {info['setup_s']:.1f}s compile {info['compile_s']} "
              f"rss +{mem.increase:.0f} MiB", file=sys.stderr, flush=True)
    out["ips"], out["times"] = {}, {}
    for b in batches:
        names = [r.name for r in rs if (r.name, b) in prepared]
        runs = runs32 if b >= 8 else runs1
        iters = {}
        for n in names:        # calls per timed run: ~1 s worth, at least 1
            t0 = time.perf_counter()
            prepared[(n, b)]()
            iters[n] = max(1, int(round(1.0 / max(time.perf_counter() - t0, 1e-4))))
        times = {n: [] for n in names}
        for k in range(runs):
            order = names[k % len(names):] + names[:k % len(names)]
            if k % 2:
                order = order[::-1]
            for n in order:
                run = prepared[(n, b)]
                time.sleep(0.2)                         # let other pools' spinning threads park
                t0 = time.perf_counter()
                for _ in range(iters[n]):
                    run()
                times[n].append((time.perf_counter() - t0) / iters[n])
        out["ips"][b] = {n: b / statistics.median(ts) for n, ts in times.items()}
        # ×archc per round (all frameworks timed back to back), then the median over rounds: the
        # host's speed drifts by up to 2x over seconds, and a round sees one speed
        if "archc" in times:
            out.setdefault("ratio", {})[b] = {
                n: statistics.median(t / a for t, a in zip(ts, times["archc"])) for n, ts in times.items()}
        out["times"][b] = {n: {"iters": iters[n], "runs": runs, "s_per_call": ts} for n, ts in times.items()}
        print(f"[{net}] batch {b}: " + ", ".join(f"{n} {v:.1f}" for n, v in out["ips"][b].items()),
              file=sys.stderr, flush=True)
    out["load_end"], out["cpu_end"] = load1(), cpu_jiffies()
    emit(out)


def worker_peak():
    import jax
    import jax.numpy as jnp
    import numpy as np
    out = {"load_start": load1()}
    n = 4096
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n), np.float32))
    b = jnp.asarray(rng.standard_normal((n, n), np.float32))
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        ts.append(time.perf_counter() - t0)
    out.update(n=n, best_s=min(ts), gflops=2 * n**3 / min(ts) / 1e9, load_end=load1())
    emit(out)


def worker_build_archc():
    """What `archc build densenet121` does after its imports: parse + IR + shapes + stats (the
    front end), then the lowering check (every node's shape traced by jax.eval_shape)."""
    t0 = time.perf_counter()
    from archc.compiler.build import build_graph
    from archc.compiler.stats import summarize
    imp = time.perf_counter() - t0
    t0 = time.perf_counter()
    from archc.runtime.model import Model
    imp_jax = time.perf_counter() - t0
    front, check = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        g = build_graph("densenet121", None, None)
        summarize(g)
        t1 = time.perf_counter()
        Model(g).eval_shapes()
        t2 = time.perf_counter()
        front.append(t1 - t0)
        check.append(t2 - t1)
    total = [a + b for a, b in zip(front, check)]
    emit({"import_s": imp, "import_jax_s": imp_jax, "front_s": front, "check_s": check,
          "first_s": total[0], "median_s": statistics.median(total), "all_s": total, "load": load1()})


KERAS_BUILD = ("import os; os.environ['KERAS_BACKEND'] = 'jax'; import keras; "
               "keras.applications.DenseNet121(weights=None)")


def worker_build_keras():
    os.environ["KERAS_BACKEND"] = "jax"
    t0 = time.perf_counter()
    import keras
    imp = time.perf_counter() - t0
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        keras.applications.DenseNet121(weights=None)
        ts.append(time.perf_counter() - t0)
        keras.backend.clear_session()
    emit({"import_s": imp, "first_s": ts[0], "median_s": statistics.median(ts), "all_s": ts, "load": load1()})


TRAIN_FRAMEWORKS = ("archc", "torch-eager", "archc-bf16", "torch-eager-bf16")


TRAIN_NETS = ("resnet50", "mobilenet_v2")


def train_runner(framework: str, net: str = "resnet50", batch: int = 32, size: int = 224,
                 device: str = "cpu"):
    """One framework's training step on ``net``: ``(compile_s, run)``, ``run()`` doing one step
    (SGD momentum 0.9, softmax cross-entropy) on a fixed random batch and blocking until it is
    done. ``framework``: 'archc' (jitted step, optax, donated state), 'torch-eager' or
    'torch.compile' (torchvision's model); a '-bf16' suffix: mixed precision, archc's
    dtype='bfloat16' policy against PyTorch's autocast to bfloat16 (both keep float32 weights).
    ``device``: PyTorch's ('cpu', 'cuda': then channels_last, as PyTorch's GPU recipes do); JAX
    runs on its default device. torch.compile's compile_s is its first step's wall time."""
    import numpy as np
    bf16 = framework.endswith("-bf16")
    framework = framework.removesuffix("-bf16")
    rng = np.random.default_rng(0)
    xh = rng.standard_normal((batch, size, size, 3), np.float32)
    labels = rng.integers(0, 1000, batch)
    if framework == "archc":
        import jax
        import jax.numpy as jnp
        import optax
        import archc
        model = archc.load(net) if size == 224 else archc.load(net, input_shape=(size, size, 3))
        v = model.init(seed=0)
        tx = optax.sgd(0.01, momentum=0.9)
        params, stats = v["params"], v["batch_stats"]
        opt = tx.init(params)
        rng_key = jax.random.PRNGKey(0)          # dropout (MobileNetV2's classifier)

        def step(params, stats, opt, x, y):
            def loss_fn(p):
                logits, nv = model.apply_fn({"params": p, "batch_stats": stats}, x, train=True,
                                            rng=rng_key if model.program.has_dropout else None,
                                            dtype="bfloat16" if bf16 else None)
                return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), nv["batch_stats"]
            (loss, stats2), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
            upd, opt2 = tx.update(g, opt, params)
            return optax.apply_updates(params, upd), stats2, opt2, loss

        x, y = jnp.asarray(xh), jnp.asarray(labels)
        t0 = time.perf_counter()
        cstep = jax.jit(step, donate_argnums=(0, 1, 2)).lower(params, stats, opt, x, y).compile()
        compile_s = time.perf_counter() - t0
        state = [params, stats, opt]

        def run():
            p, s, o, loss = cstep(*state, x, y)
            state[:] = [p, s, o]
            jax.block_until_ready(loss)
        return compile_s, run
    import torch
    from peers import torch_compile, torch_device_setup, torchvision_model
    dev, memory_format, sync = torch_device_setup(device)
    tm = torchvision_model(net).train().to(dev, memory_format=memory_format)
    topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    tx_ = torch.from_numpy(np.ascontiguousarray(xh.transpose(0, 3, 1, 2))).to(dev, memory_format=memory_format)
    ty = torch.from_numpy(labels).to(dev)
    forward = torch_compile(tm) if framework == "torch.compile" else tm

    def run():
        topt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(forward(tx_), ty)
        loss.backward()
        topt.step()
        sync()
    if framework != "torch.compile":
        return 0.0, run
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0, run


def worker_train(framework: str, runs: int, net: str = "resnet50"):
    """`runs` timed training steps of one framework on `net` at batch 32 (train_runner), alone in
    this process (two frameworks training batch 32 in one process compete for memory: session 2
    measured archc at 77 s/step that way and 24 s alone)."""
    batch = 32
    out = {"load_start": load1(), "cpu_start": cpu_jiffies(), "batch": batch, "framework": framework,
           "net": net}
    if framework.startswith("archc"):
        import jax
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        import torch
        torch.set_num_threads(2)
    compile_s, run = train_runner(framework, net, batch)
    if framework.startswith("archc"):
        out["compile_s"] = compile_s
    run()                                                    # warm-up
    times = []
    for _ in range(runs):
        time.sleep(0.2)
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    out.update(times=times, load_end=load1(), cpu_end=cpu_jiffies(), peak_rss_gib=peak_rss_gib())
    emit(out)


# ============================================================ orchestration

def recent_steal(seconds: float = 5.0) -> float:
    start = cpu_jiffies()
    time.sleep(seconds)
    return steal_pct(start, cpu_jiffies())


def wait_for_load(max_load: float, max_wait: float, enabled: bool, max_steal: float = 10.0) -> float:
    """Wait (up to max_wait s) until the load average is below max_load and the hypervisor's
    steal over 5 s below max_steal %: steal swung between 0 and 50 % within minutes here, and
    every framework slows with it, but not equally."""
    t0 = time.time()
    while enabled and time.time() - t0 < max_wait:
        load, steal = load1(), recent_steal()
        if load < max_load and steal < max_steal:
            break
        print(f"load {load:.2f} (max {max_load}), steal {steal:.0f} % (max {max_steal:.0f}): waiting 30 s",
              file=sys.stderr, flush=True)
        time.sleep(30)
    return load1()


def call_worker(args_list, timeout=1800, env=None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"] + [str(a) for a in args_list]
    print("$ " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith(MARK):
            res = json.loads(line[len(MARK):])
            res["worker_wall_s"] = wall
            return res
    raise RuntimeError(f"worker {args_list} failed (rc {p.returncode})")


def cpu_model() -> str:
    try:
        m = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    except OSError:
        return "unknown CPU"
    return m.group(1).strip() if m else "unknown CPU"


def machine() -> dict:
    cpu = cpu_model()
    from importlib.metadata import version
    libs = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "torchvision", "onnx", "onnxruntime", "keras"):
        try:
            libs[pkg] = version(pkg)
        except Exception:  # noqa: BLE001
            libs[pkg] = "?"
    mem = "?"
    try:
        kb = int(re.search(r"MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem": mem, "python": platform.python_version(), "libs": libs,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def fmt(x, nd=1):
    if x is None:
        return "–"
    return f"{x:.{nd}f}" if abs(x) < 1000 else f"{x:,.0f}"


def render(res: dict) -> str:
    m = res["machine"]
    L = [BEGIN, "## Harness: archc vs peers (`python bench/harness.py" + (" --quick" if res["quick"] else "")
         + " --out BENCHMARKS.md`)", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['mem']} RAM, Python {m['python']}; "
         + ", ".join(f"{k} {v}" for k, v in m["libs"].items())
         + (f"; XLA_FLAGS=`{m['xla_flags']}`" if m["xla_flags"] else "") + ".",
         f"Run: {res['date']}, {res['total_s'] / 60:.1f} min in all. Each section notes the 1-minute load "
         f"average at its start/end (target < {res['max_load']}; other jobs share this machine) and, "
         "where recorded, the hypervisor's steal while it ran (/proc/stat).", "",
         "Method: float32 inference, random inputs, each framework in its native layout (NHWC for "
         "archc/Flax/Keras, NCHW for PyTorch/ONNX Runtime); all frameworks of one network in one "
         "subprocess, set up and warmed up in turn, then timed interleaved (order rotating per run). "
         f"Batch 32: {res['runs32']} timed rounds of 1 call each; batch 1: "
         f"{res['runs1']} runs of ~1 s of calls. Compile = XLA `jit(f).lower().compile()` (archc, "
         "Flax, Keras), first call incl. Inductor compile (torch.compile, `dynamic=False`, fresh cache), "
         "InferenceSession creation (ONNX Runtime; export time listed separately). RSS = peak increase "
         "of the process's resident memory (sampled every 5 ms) while that framework was built, "
         "compiled and warmed up at all batches — with the weights, compiled code and the largest "
         "batch's activations. PyTorch and ONNX Runtime use 2 threads; XLA uses its default (all cores).", ""]
    for net in res["nets"]:
        r = res["net"].get(net)
        if r is None:
            continue
        steal = f", steal {steal_pct(r['cpu_start'], r['cpu_end']):.0f} %" if "cpu_start" in r else ""
        L += [f"### {net} ({'299x299' if net == 'inception_v3' else '224x224'}) — load {r['load_start']:.2f} → "
              f"{r['load_end']:.2f}{steal}", ""]
        bs = [str(b) for b in r["batches"]]
        head = "| framework | " + " | ".join(f"img/s b{b} | ×archc b{b} | compile b{b} (s)" for b in bs) \
            + " | RSS + (MiB) |"
        L += [head, "|---" + "|---:" * (3 * len(bs) + 1) + "|"]
        for fw, info in r["frameworks"].items():
            cells = []
            for b in bs:
                ips = r["ips"][b].get(fw)
                if ips is None:
                    cells += ["–", "–", "–"]
                    continue
                ratio = r.get("ratio", {}).get(b, {}).get(fw, r["ips"][b]["archc"] / ips)
                cells += [fmt(ips, 2 if ips < 10 else 1), f"{ratio:.2f}",
                          fmt(info["compile_s"][b], 2)]
            L.append(f"| {fw} | " + " | ".join(cells) + f" | {info['rss_increase_mib']:.0f} |")
        extra = r["frameworks"].get("onnxruntime", {})
        if "export_s" in extra:
            L.append("")
            L.append(f"ONNX export (torch.onnx, dynamic batch): {extra['export_s']:.1f} s; "
                     f"session creation {extra['session_s']:.2f} s.")
        L.append("")
        L.append("×archc = that framework's time per call ÷ archc's in the same round, median over rounds "
                 "(> 1: archc is faster); img/s = batch ÷ median time per call.")
        L.append("")
    if "build" in res:
        a, k, cli, kp = (res["build"][n] for n in ("archc", "keras", "cli", "keras_process"))
        med = statistics.median
        L += ["### `archc build densenet121` vs `keras.applications.DenseNet121(weights=None)` — load "
              f"{a['load']:.2f}", "",
              "In one process, after the imports:", "",
              "| | first call (s) | median of repeats (s) | imports (s) |", "|---|---:|---:|---:|",
              f"| archc front end: parse, IR, shapes, stats (`build_graph` + `summarize`) | {a['front_s'][0]:.3f} | "
              f"{med(a['front_s']):.3f} | {a['import_s']:.2f} |",
              f"| archc lowering check: every node's shape by `jax.eval_shape` | {a['check_s'][0]:.3f} | "
              f"{med(a['check_s']):.3f} | {a['import_jax_s']:.2f} (jax) |",
              f"| **archc build, both** | **{a['first_s']:.3f}** | **{a['median_s']:.3f}** | |",
              f"| Keras DenseNet121 construction | {k['first_s']:.3f} | {k['median_s']:.3f} | {k['import_s']:.2f} |",
              "", f"Whole processes (wall time, median of {len(cli['all_s'])}, alternated):", "",
              "| command | wall (s) | all (s) |", "|---|---:|---|",
              f"| `archc build densenet121` (process start, imports, build, table, lowering check) | "
              f"{cli['median_s']:.2f} | {', '.join(f'{t:.2f}' for t in cli['all_s'])} |",
              f"| `python -c \"import keras; keras.applications.DenseNet121(weights=None)\"` | "
              f"{kp['median_s']:.2f} | {', '.join(f'{t:.2f}' for t in kp['all_s'])} |",
              "",
              f"Ratio archc build / Keras construction, in process: first call {a['first_s'] / k['first_s']:.3f}, "
              f"repeats {a['median_s'] / k['median_s']:.3f}. Whole processes: "
              f"{cli['median_s'] / kp['median_s']:.3f}. Goal ≤ 0.100.", ""]
    for net, trained in res.get("train", {}).items():
        rounds = trained["rounds"]
        steps = {fw: [t for r in rounds for t in r[fw]["times"]] for fw in rounds[0]}
        loads = [r[fw][k] for r in rounds for fw in r for k in ("load_start", "load_end")]
        L += [f"### Training step, {net}, batch 32 — load {min(loads):.2f} to {max(loads):.2f}", "",
              "SGD momentum 0.9, softmax cross-entropy; one step = forward + backward + update. archc: "
              "`jax.jit(step, donate_argnums=(params, batch_stats, opt_state))` with optax; PyTorch eager: "
              "`loss.backward(); opt.step()`. '-bf16': mixed precision with float32 weights, archc's "
              "`dtype='bfloat16'` policy and PyTorch's `torch.autocast('cpu', torch.bfloat16)`. Each "
              f"framework trains alone in its own process, {len(rounds)} rounds in the order of the "
              f"table, {len(rounds[0]['archc']['times'])} timed steps after 1 warm-up. Steal: the share "
              "of the VM's CPU time the hypervisor took (/proc/stat) while that process ran.", "",
              "| | img/s | s/step (median) | all steps (s) | peak RSS (GiB) | steal % |",
              "|---|---:|---:|---|---:|---|"]
        for fw, ts in steps.items():
            rss = max(r[fw]["peak_rss_gib"] for r in rounds)
            steal = ", ".join(f"{steal_pct(r[fw]['cpu_start'], r[fw]['cpu_end']):.0f}"
                              for r in rounds if "cpu_start" in r[fw])
            L.append(f"| {fw} | {32 / statistics.median(ts):.2f} | {statistics.median(ts):.2f} | "
                     f"{', '.join(f'{t:.1f}' for t in ts)} | {rss:.1f} | {steal} |")
        L.append("")
        for suffix in ("", "-bf16"):
            a, t = steps.get("archc" + suffix), steps.get("torch-eager" + suffix)
            if a and t:
                L.append(f"Ratio archc{suffix} / PyTorch eager{suffix} (speed, ratio of median step times): "
                         f"{statistics.median(t) / statistics.median(a):.2f}.")
        if "archc-bf16" in steps:
            L.append(f"archc bf16 / float32: {statistics.median(steps['archc']) / statistics.median(steps['archc-bf16']):.2f}.")
        L += [f"archc step compile: {statistics.median(r['archc']['compile_s'] for r in rounds):.1f} s.", ""]
    if "peak" in res and "resnet50" in res["net"]:
        p, r = res["peak"], res["net"]["resnet50"]
        macs = res["resnet50_macs"]
        L += [f"### ResNet-50 achieved FLOP/s vs matmul peak — load {p['load_start']:.2f}", "",
              f"float32 matmul peak: jitted `jnp.dot` {p['n']}x{p['n']}, best of 5: {p['gflops']:.1f} GFLOP/s. "
              f"ResNet-50: {macs / 1e9:.3f} GMACs/image (archc.compiler.stats), 2 FLOPs per MAC.", "",
              "| framework | batch | img/s | GFLOP/s | fraction of peak |", "|---|---:|---:|---:|---:|"]
        for b in r["batches"]:
            for fw in r["ips"][str(b)]:
                ips = r["ips"][str(b)][fw]
                g = 2 * macs * ips / 1e9
                L.append(f"| {fw} | {b} | {ips:.2f} | {g:.1f} | {g / p['gflops']:.2f} |")
        L.append("")
    if res.get("notes"):
        L += ["### Notes", ""] + res["notes"] + [""]
    L.append(END)
    return "\n".join(L)


def write(path: Path, text: str):
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
    else:
        new = text + "\n\n" + old if old.strip() else text + "\n"
    path.write_text(new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="resnet50 at batch 32 + build timing only")
    ap.add_argument("--out", help="Markdown file whose harness section to add/replace")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--nets", nargs="+", default=None)
    ap.add_argument("--batches", type=int, nargs="+", default=None)
    ap.add_argument("--only", nargs="+", default=None, help="framework names to run (default: all)")
    ap.add_argument("--runs32", type=int, default=5)
    ap.add_argument("--runs1", type=int, default=5)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--runs-train", type=int, default=5, help="timed steps per training process")
    ap.add_argument("--train-frameworks", nargs="+", default=list(TRAIN_FRAMEWORKS), choices=TRAIN_FRAMEWORKS)
    ap.add_argument("--train-nets", nargs="+", default=list(TRAIN_NETS))
    ap.add_argument("--sections", nargs="+", choices=["peak", "build", "nets", "train"],
                    default=["peak", "build", "nets", "train"],
                    help="parts to run (a partial run is best written with --out to another file)")
    ap.add_argument("--compile-batches", default="32",
                    help="batches at which torch.compile is measured (comma-separated; Inductor compiles "
                         "take ~1 min each on 2 cores)")
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--max-steal", type=float, default=10.0, help="percent of CPU time (/proc/stat)")
    ap.add_argument("--first-wait", type=float, default=900, help="max seconds to wait for low load at the start")
    ap.add_argument("--wait", type=float, default=120, help="max seconds to wait for low load between sections")
    ap.add_argument("--no-wait", action="store_true")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        kind, rest = args.worker[0], args.worker[1:]
        if kind == "net":
            batches = [int(b) for b in rest[1].split(",")]
            only = rest[4].split(",") if len(rest) > 4 and rest[4] else None
            os.environ["HARNESS_COMPILE_BATCHES"] = rest[5] if len(rest) > 5 else ""
            worker_net(rest[0], batches, int(rest[2]), int(rest[3]), only)
        elif kind == "peak":
            worker_peak()
        elif kind == "build_archc":
            worker_build_archc()
        elif kind == "build_keras":
            worker_build_keras()
        elif kind == "train":
            worker_train(rest[0], int(rest[1]), *rest[2:])
        return 0

    t_start = time.perf_counter()
    nets = args.nets or (["resnet50"] if args.quick else NETS)
    batches = args.batches or ([32] if args.quick else [1, 32])
    res = {"machine": machine(), "quick": args.quick, "nets": nets, "runs32": args.runs32, "runs1": args.runs1,
           "max_load": args.max_load, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "net": {}}
    wait = not args.no_wait
    first = [True]

    def section():
        wait_for_load(args.max_load, args.first_wait if first[0] else args.wait, wait, args.max_steal)
        first[0] = False

    def flush():
        res["total_s"] = time.perf_counter() - t_start
        for r in res["net"].values():
            r["ips"] = {str(k): v for k, v in r["ips"].items()}
            r["ratio"] = {str(k): v for k, v in r.get("ratio", {}).items()}
            for f in r["frameworks"].values():
                f["compile_s"] = {str(k): v for k, v in f["compile_s"].items()}
        notes_path = ROOT / "bench" / "harness_notes.md"
        res["notes"] = notes_path.read_text().strip().splitlines() if notes_path.exists() else []
        text = render(res)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1))
        if args.out:
            write(Path(args.out), text)
        return text

    if "peak" in args.sections:
        section()
        res["peak"] = call_worker(["peak"])
        print(f"matmul peak {res['peak']['gflops']:.1f} GFLOP/s", file=sys.stderr)
        from archc.compiler.build import build_graph
        from archc.compiler.stats import summarize
        res["resnet50_macs"] = summarize(build_graph("resnet50", None, None))["macs"]
    if "build" in args.sections:
        section()
        res["build"] = build_timings()
        flush()
    for net in nets if "nets" in args.sections else []:
        section()
        try:
            res["net"][net] = call_worker(["net", net, ",".join(map(str, batches)), args.runs32, args.runs1,
                                           ",".join(args.only or []), args.compile_batches])
        except Exception as e:  # noqa: BLE001 - report the rest
            print(f"{net}: {e}", file=sys.stderr)
        flush()
    if "train" in args.sections and not (args.quick or args.no_train):
        # one process per framework, in two rounds (A B C D A B C D) so that drifts in machine
        # speed reach all of them
        res["train"] = {net: {"rounds": []} for net in args.train_nets}
        for net in args.train_nets:
            for _ in range(2):
                section()
                res["train"][net]["rounds"].append({fw: call_worker(["train", fw, args.runs_train, net])
                                                    for fw in args.train_frameworks})
    print(flush())
    return 0


def build_timings() -> dict:
    b = {"archc": call_worker(["build_archc"]), "keras": call_worker(["build_keras"])}
    # whole processes, alternated: the `archc build` command against a Python process that
    # imports Keras and constructs the model
    commands = {"cli": [str(Path(sys.executable).with_name("archc")), "build", "densenet121"],
                "keras_process": [sys.executable, "-c", KERAS_BUILD]}
    walls: dict = {k: [] for k in commands}
    for i in range(5):
        for k in (list(commands) if i % 2 == 0 else list(commands)[::-1]):
            t0 = time.perf_counter()
            subprocess.run(commands[k], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            walls[k].append(time.perf_counter() - t0)
    for k, ts in walls.items():
        b[k] = {"median_s": statistics.median(ts), "all_s": ts}
    return b


if __name__ == "__main__":
    sys.exit(main())
