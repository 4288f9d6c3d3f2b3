"""archc.detect vs torchvision eager on SSD300-VGG16 (91 COCO classes, random weights imported
through the shipped mapping), images to boxes at the same batch -> a section of BENCHMARKS.md.

    python bench/detect_ssd.py [--out BENCHMARKS.md] [--batches 1 4] [--rounds 5] [--max-load 1.5]

Both run the whole pipeline: transform (normalise, resize the 512x512 astronaut to 300x300),
network, post-processing (softmax, decode, per-class top-400, NMS, top-200), boxes rescaled to
the original size. torchvision: ``model(list_of_images)`` under ``torch.no_grad()``. archc:
``archc.detect(model, variables, images)`` (one jit; host lists out). Timed interleaved, the
order alternating per round; the ratio is the median over rounds of torch time / archc time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import harness  # noqa: E402

BEGIN, END = "<!-- detection:begin -->", "<!-- detection:end -->"


def setup():
    import jax
    import numpy as np
    import torch
    import torchvision
    from skimage import data

    import archc
    from archc.runtime.weights import import_weights
    torch.manual_seed(0)
    tm = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None).eval()
    with tempfile.TemporaryDirectory() as d:
        torch.save(tm.state_dict(), f"{d}/ssd.pth")
        model = archc.load("ssd300_vgg16", classes=91)
        variables, report = import_weights(model, f"{d}/ssd.pth", source="torchvision")
    assert report.ok
    variables = jax.device_put(variables)
    image = data.astronaut().astype(np.float32) / 255
    return tm, model, variables, image


def time_batch(tm, model, variables, image, batch: int, rounds: int) -> dict:
    import numpy as np
    import torch

    import archc
    ims = [image] * batch
    tensors = [torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))] * batch

    def run_torch():
        with torch.no_grad():
            return tm(tensors)

    def run_archc():
        return archc.detect(model, variables, ims)
    t0 = time.perf_counter()
    first = run_archc()                   # compiles
    compile_s = time.perf_counter() - t0
    ref = run_torch()
    assert [len(r["boxes"]) for r in ref] == [len(f["boxes"]) for f in first]
    times = {"torch": [], "archc": []}
    load0, cpu0 = harness.load1(), harness.cpu_jiffies()
    for r in range(rounds):
        order = (("torch", run_torch), ("archc", run_archc))
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {"batch": batch, "times": times, "compile_s": compile_s, "load": (load0, harness.load1()),
            "steal": harness.steal_pct(cpu0, harness.cpu_jiffies())}


def render(rows, machine, date) -> str:
    L = [BEGIN, "## Detection: `archc.detect` vs torchvision eager, SSD300-VGG16 (bench/detect_ssd.py)", "",
         f"Run {date}; {machine['cpu']}, {machine['cores']} cores; "
         + ", ".join(f"{k} {v}" for k, v in machine["libs"].items() if k in ("jax", "torch", "torchvision")) + ".",
         "Images/s, float32, the 512x512 astronaut repeated to the batch, 91 classes, random weights (the same in "
         "both, imported); both the whole pipeline: transform, network, post-processing, rescaling. "
         "Ratio = median over interleaved rounds of torch time / archc time.", "",
         "| batch | archc.detect | torchvision eager | archc ÷ torch | archc compile (s) | load / steal |",
         "|---|---|---|---|---|---|"]
    for r in rows:
        b, t = r["batch"], r["times"]
        ips = {k: b / statistics.median(v) for k, v in t.items()}
        ratio = statistics.median(tt / ta for ta, tt in zip(t["archc"], t["torch"]))
        L.append(f"| {b} | {ips['archc']:.2f} | {ips['torch']:.2f} | **{ratio:.2f}** | {r['compile_s']:.1f} | "
                 f"{r['load'][0]:.1f}–{r['load'][1]:.1f} / {r['steal']:.0f} % |")
    L += ["", END]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=600, help="seconds to wait for a quiet machine (0: do not)")
    ap.add_argument("--out", help="BENCHMARKS.md: replace (or append) the detection section")
    args = ap.parse_args(argv)
    harness.wait_for_load(args.max_load, args.wait, args.wait > 0)
    tm, model, variables, image = setup()
    rows = [time_batch(tm, model, variables, image, b, args.rounds) for b in args.batches]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = render(rows, harness.machine(), date)
    print(text)
    if args.out:
        p = Path(args.out)
        old = p.read_text() if p.exists() else ""
        if BEGIN in old and END in old:
            new = old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        p.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
