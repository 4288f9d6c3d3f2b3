"""archc against PyTorch on one GPU: training steps and inference, one JSON + one markdown table.

    python bench/gpu_bench.py --out DIR [--dry-run] [--budget 450]

Run through bench/gpu.sh (it sets up the device's Python and XLA's flags). The measurements are
the project's own: bench/harness.py's ``train_runner`` (the classification training step),
bench/peers.py's runners (inference) and bench/detection_train_step.py's ``measure`` (the
detection step), with their device, dtype and size options. Each framework family runs in its own
process (archc/JAX, PyTorch eager, torch.compile), one after the other, so that each has the GPU's
memory to itself; inside a process the jobs run in the order of JOBS, and a job not started by its
family's deadline is recorded as skipped (the run must end within the device's lease).

``--dry-run``: on the CPU, every job through the same code with a stand-in network that XLA:CPU
compiles in seconds (DRY_NETS: ResNet-18 at 32x32, batch 2; the detection step in float32 at
batch 1), one timed call each, torch.compile with Dynamo's 'eager' backend (capture without
Inductor); and every real network of JOBS built by archc and torchvision. It checks that every
piece assembles, not speed.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
MARK = "@@GPUBENCH "
FAMILIES = ("archc", "torch-eager", "torch.compile")

# (label, kind, net, dtype, batch on the GPU); kind: train (classification step), infer, detect
# (detection training step). bfloat16: archc's dtype='bfloat16' policy, PyTorch's autocast to
# bfloat16 (AMP); both keep float32 weights. Ordered by importance: what a lease cuts short is the end.
JOBS = [
    ("ResNet-50 training step, bf16", "train", "resnet50", "bfloat16", 256),
    ("ResNet-50 training step, fp32", "train", "resnet50", "float32", 256),
    ("ResNet-50 inference, bf16", "infer", "resnet50", "bfloat16", 256),
    ("ResNet-50 inference, fp32", "infer", "resnet50", "float32", 256),
    ("EfficientNet-B0 training step, bf16", "train", "efficientnet_b0", "bfloat16", 256),
    ("EfficientNet-B0 inference, bf16", "infer", "efficientnet_b0", "bfloat16", 256),
    ("SSD300-VGG16 detection training step, bf16", "detect", "ssd300_vgg16", "bfloat16", 32),
]
# The budget's shares: each family starts no job later than START after its own start (and
# after the start of the run, for the last), and is killed at END after the run's start, so that
# one family's overrun cannot take the others' time. archc's XLA compiles (with autotuning) and
# Inductor's dominate; PyTorch eager needs seconds a job.
START = {"archc": 0.40, "torch-eager": 0.12, "torch.compile": 0.80}
END = {"archc": 0.55, "torch-eager": 0.70, "torch.compile": 1.0}
# --dry-run's stand-ins (kind -> network, dtype or None to keep the job's): the real ones' XLA:CPU
# compiles take minutes on two cores (ResNet-50's training step ~20 s, EfficientNet-B0's ~2 min,
# SSD300's in bf16 ~2.5 min)
DRY_NETS = {"train": ("resnet18", None), "infer": ("resnet18", None), "detect": ("ssd300_vgg16", "float32")}


def emit(obj):
    print(MARK + json.dumps(obj), flush=True)


def timed(run, batch: int, dry: bool) -> dict:
    """img/s from the median of 5 repeats of ~0.5 s of calls each (run() blocks until done), after
    one more warm-up call; dry: one call."""
    run()
    if dry:
        t0 = time.perf_counter()
        run()
        s = time.perf_counter() - t0
        return {"s_per_call": s, "img_s": batch / s, "calls": 1}
    t0 = time.perf_counter()
    run()
    iters = max(1, int(0.5 / max(time.perf_counter() - t0, 1e-4)))
    per = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters):
            run()
        per.append((time.perf_counter() - t0) / iters)
    s = statistics.median(per)
    return {"s_per_call": s, "img_s": batch / s, "calls": 5 * iters}


def run_job(family: str, job: dict, device: str, dry: bool) -> dict:
    kind, net, dtype, batch, size = job["kind"], job["net"], job["dtype"], job["batch"], job["size"]
    bf16 = dtype == "bfloat16"
    if kind == "detect":
        from detection_train_step import measure
        r = measure(net, batch, rounds=1 if dry else 3, steps=1 if dry else 2, device=device, dtype=dtype,
                    frameworks=(family,))
        s = statistics.median(r["s_per_step"][family])
        return {"s_per_call": s, "img_s": batch / s, "compile_s": r["compile_s"][family],
                "calls": len(r["s_per_step"][family]) * (1 if dry else 2), "size": r["size"]}
    if kind == "train":
        from harness import train_runner
        compile_s, run = train_runner(family + ("-bf16" if bf16 else ""), net, batch, size, device)
    else:
        import peers
        if family == "archc":
            r = peers.ArchcRunner(net, dtype="bfloat16" if bf16 else None, size=size)
        else:
            cls = peers.TorchCompileRunner if family == "torch.compile" else peers.TorchEagerRunner
            r = cls(net, device=device, amp=bf16, size=size)
        r.setup()
        compile_s, run = r.prepare(batch)
        if family == "torch.compile":          # prepare's first call compiled; one more warms up
            run()
    out = timed(run, batch, dry)
    out["compile_s"] = compile_s
    return out


def builds(family: str, nets: list) -> dict:
    """--dry-run: each real network built by this family's library (archc.load, or torchvision's
    constructor): name -> 'ok' or the error."""
    out = {}
    for net in nets:
        try:
            if family == "archc":
                import archc
                archc.load(net, classes=91) if net.startswith("ssd") else archc.load(net)
            else:
                import torchvision
                from peers import torchvision_model
                if net.startswith("ssd"):
                    getattr(torchvision.models.detection, net)(weights=None, weights_backbone=None, num_classes=91)
                else:
                    torchvision_model(net)
            out[net] = "ok"
        except Exception as e:  # noqa: BLE001 - reported in the table
            out[net] = f"{type(e).__name__}: {e}"
    return out


def worker(family: str, jobs: list, device: str, dry: bool, deadline: float):
    """Run ``jobs`` for one framework family in this process; one result line each."""
    if family == "archc":
        import jax
        jax.config.update("jax_enable_compilation_cache", False)
        backend = jax.default_backend()
        if device == "cuda" and backend != "gpu":
            raise SystemExit(f"JAX runs on {backend}, not a GPU: is the CUDA plugin (jax-cuda*-plugin) installed?")
    else:
        import torch
        if device == "cpu":
            torch.set_num_threads(min(4, os.cpu_count() or 1))
        if family == "torch.compile":
            import tempfile
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_"))
    if dry:
        emit({"builds": builds(family, sorted({j["real_net"] for j in jobs})), "framework": family})
    for job in jobs:
        row = {"label": job["label"], "framework": family}
        if time.time() > deadline:
            emit({**row, "status": "skipped", "why": "time budget"})
            continue
        t0 = time.perf_counter()
        try:
            row.update(run_job(family, job, device, dry), status="ok")
        except Exception as e:  # noqa: BLE001 - one failed job must not lose the others
            import traceback
            traceback.print_exc()
            row.update(status="failed", why=f"{type(e).__name__}: {str(e)[:300]}")
        row["wall_s"] = time.perf_counter() - t0
        if family == "archc":
            import jax
            jax.clear_caches()
        else:
            import torch
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        gc.collect()
        emit(row)
        print(f"[{family}] {job['label']}: {row.get('img_s', 0):.1f} img/s ({row['status']}, "
              f"{row['wall_s']:.0f} s)", file=sys.stderr, flush=True)


def machine(device: str) -> dict:
    from importlib.metadata import version
    libs = {}
    for pkg in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "torch", "torchvision"):
        try:
            libs[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - not installed
            pass
    m = {"python": platform.python_version(), "libs": libs, "device": device,
         "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": os.cpu_count()}
    if device == "cuda":
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            m["gpu"] = q.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            m["gpu"] = f"? ({e})"
    return m


def jobs_for(dry: bool) -> list:
    from detection_train_step import NETS as DETECTION_NETS        # a detector's input size is its own
    jobs = []
    for label, kind, net, dtype, batch in JOBS:
        job = {"label": label, "kind": kind, "net": net, "real_net": net, "dtype": dtype, "batch": batch, "size": 224}
        if dry:
            stand_in, dry_dtype = DRY_NETS[kind]
            job.update(net=stand_in, dtype=dry_dtype or dtype, batch=1 if kind == "detect" else 2, size=32)
        if kind == "detect":
            job["size"] = DETECTION_NETS[job["net"]][2]
        jobs.append(job)
    return jobs


def call_worker(family, jobs, device, dry, deadline, hard_limit) -> list:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", family, "--device", device,
           "--deadline", str(deadline), "--jobs", json.dumps(jobs)] + (["--dry-run"] if dry else [])
    env = dict(os.environ)
    if family != "archc":
        env["JAX_PLATFORMS"] = "cpu"      # the detection step's data preparation imports JAX: keep it off the GPU
    rows = []
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env,
                           timeout=max(hard_limit - time.time(), 10))
        stdout, why = p.stdout, f"worker exited with status {p.returncode}"
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        why = "killed at the time budget's end"
    for line in stdout.splitlines():
        if line.startswith(MARK):
            rows.append(json.loads(line[len(MARK):]))
    built = [r for r in rows if "builds" in r]
    rows = [r for r in rows if "builds" not in r]
    if built:
        BUILDS[family] = built[0]["builds"]
    done = {r["label"] for r in rows}
    rows += [{"label": j["label"], "framework": family, "status": "failed", "why": why}
             for j in jobs if j["label"] not in done]
    return rows


BUILDS: dict = {}        # --dry-run: family -> {real network: 'ok' or the error}


def fmt(x, nd=1):
    """x with nd decimals, or 3 significant digits below 1 (a CPU dry run's 0.04 img/s is not 0.0)."""
    if x is None:
        return "–"
    return f"{x:,.{nd}f}" if abs(x) >= 1 else f"{x:.3g}"


def render(res: dict) -> str:
    m = res["machine"]
    by = {(r["label"], r["framework"]): r for r in res["rows"]}
    jobs = {j["label"]: j for j in res["jobs"]}
    L = [f"GPU: {m.get('gpu', m['device'])}; Python {m['python']}; "
         + ", ".join(f"{k} {v}" for k, v in m["libs"].items())
         + (f"; XLA_FLAGS=`{m['xla_flags']}`" if m["xla_flags"] else "")
         + f". {res['date']}, {res['total_s'] / 60:.1f} min in all"
         + (" (DRY RUN: CPU, tiny sizes; not speeds)" if res["dry_run"] else "") + ".",
         "",
         "| measurement | network | batch | size | archc img/s | PyTorch eager img/s | torch.compile img/s "
         "| archc ÷ eager "
         "| archc ÷ compile | compile s: archc / torch.compile |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]

    def ips(label, fw):
        r = by.get((label, fw), {})
        return r.get("img_s") if r.get("status") == "ok" else None

    def cell(label, fw):
        r = by.get((label, fw), {})
        return fmt(r["img_s"]) if r.get("status") == "ok" else r.get("status", "missing")

    for label, j in jobs.items():
        a, e, c = (ips(label, fw) for fw in FAMILIES)
        comp = " / ".join(fmt(by.get((label, fw), {}).get("compile_s")) for fw in ("archc", "torch.compile"))
        net = f"{j['net']} {j['dtype']}" if res["dry_run"] else j["net"]
        L.append(f"| {label} | {net} | {j['batch']} | {j['size']} | {cell(label, 'archc')} | "
                 f"{cell(label, 'torch-eager')} | {cell(label, 'torch.compile')} | {fmt(a / e, 2) if a and e else '–'} | "
                 f"{fmt(a / c, 2) if a and c else '–'} | {comp} |")
    L += ["", "img/s: batch ÷ median seconds per call (training: one SGD-momentum step, forward + backward + "
          "update), after compile and warm-up. PyTorch: torchvision's models, channels_last on the GPU, bf16 rows "
          "under `torch.autocast(bfloat16)`; torch.compile: Inductor, default mode. archc: jitted, bf16 rows with "
          "`dtype='bfloat16'`; XLA's GPU autotuning on. fp32 convolutions: both allow TF32 by default "
          "(XLA's default precision, cuDNN's `allow_tf32`). Each framework runs in its own process."]
    if res.get("builds"):
        L += ["", "Networks built (dry run): " + "; ".join(f"{fam}: " + ", ".join(f"{n} {v}" for n, v in b.items())
                                                          for fam, b in res["builds"].items()) + "."]
    problems = [r for r in res["rows"] if r["status"] != "ok"]
    if problems:
        L += ["", "Not measured: " + "; ".join(f"{r['label']} / {r['framework']}: {r['status']} ({r.get('why', '')})"
                                              for r in problems) + "."]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/archc_gpu_bench", help="folder for gpu_bench.json and gpu_bench.md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check that every piece assembles")
    ap.add_argument("--budget", type=float, default=450, help="seconds for the whole run")
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    ap.add_argument("--worker", choices=FAMILIES, help=argparse.SUPPRESS)
    ap.add_argument("--device", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--jobs", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker, json.loads(a.jobs), a.device, a.dry_run, a.deadline)
        return 0
    device = "cpu" if a.dry_run else "cuda"
    if a.dry_run:
        a.budget = max(a.budget, 3600)            # the dry run checks every piece: none is skipped
        os.environ["JAX_PLATFORMS"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["ARCHC_BENCH_TORCH_BACKEND"] = "eager"
    start = time.time()
    jobs = jobs_for(a.dry_run)
    rows = []
    for family in a.families:
        hard = start + a.budget * END[family]
        deadline = min(time.time() + a.budget * START[family], hard - 10)
        print(f"== {family} (starts no job after {deadline - start:.0f} s, stops at {hard - start:.0f} s)",
              file=sys.stderr, flush=True)
        rows += call_worker(family, jobs, device, a.dry_run, deadline, hard)
    res = {"machine": machine(device), "dry_run": a.dry_run, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
           "jobs": jobs, "rows": rows, "total_s": time.time() - start}
    if a.dry_run:
        res["builds"] = BUILDS
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(res, indent=1))
    text = render(res)
    (out / "gpu_bench.md").write_text(text)
    print(text)
    built = all(v == "ok" for b in BUILDS.values() for v in b.values())
    return 0 if not a.dry_run or (built and all(r["status"] == "ok" for r in rows)) else 1


if __name__ == "__main__":
    sys.exit(main())
