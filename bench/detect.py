"""archc.detect vs torchvision eager on a detector (91 COCO classes, random weights imported
through the shipped mapping), images to boxes at the same batch -> a section of BENCHMARKS.md.

    python bench/detect.py --net ssd300_vgg16|fasterrcnn_mobilenet_v3_large_320_fpn [--out BENCHMARKS.md]
        [--batches 1 4] [--score-thresh T …] [--rounds 5] [--max-load 1.5]

Both run the whole pipeline: transform (normalise, resize the 512x512 astronaut: to 300x300 for
SSD, to 320x320 for the 320 Faster R-CNN), network, post-processing, boxes rescaled to the
original size. torchvision: ``model(list_of_images)`` under ``torch.no_grad()``. archc:
``archc.detect(model, variables, images)`` (one jit; host lists out). Timed interleaved, the
order alternating per round; the ratio is the median over rounds of torch time / archc time.
``--score-thresh``: rows at these detection thresholds (set in both; default: the network's).
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


def _ssd_thresh(tm, t):
    tm.score_thresh = t


def _rcnn_thresh(tm, t):
    tm.roi_heads.score_thresh = t


# net -> (title, what its pipeline does, how to set torchvision's detection score threshold)
NETS = {
    "ssd300_vgg16": ("SSD300-VGG16", "resize to 300x300, softmax, per-class top-400, NMS, top-200", _ssd_thresh),
    "fasterrcnn_mobilenet_v3_large_320_fpn": (
        "Faster R-CNN MobileNetV3-Large 320 FPN",
        "resize to 320x320, pad to 32, RPN (per-level top-150, NMS, 150 proposals), RoIAlign box head, "
        "per-class decode, NMS, top-100", _rcnn_thresh),
}


def begin_end(net: str) -> tuple[str, str]:
    return f"<!-- detection:{net}:begin -->", f"<!-- detection:{net}:end -->"


def setup(net: str):
    import jax
    import numpy as np
    import torch
    import torchvision
    from skimage import data

    import archc
    from archc.runtime.weights import import_weights
    torch.manual_seed(0)
    tm = getattr(torchvision.models.detection, net)(weights=None, weights_backbone=None).eval()
    with tempfile.TemporaryDirectory() as d:
        torch.save(tm.state_dict(), f"{d}/model.pth")
        model = archc.load(net, classes=91)
        variables, report = import_weights(model, f"{d}/model.pth", source="torchvision")
    assert report.ok
    variables = jax.device_put(variables)
    image = data.astronaut().astype(np.float32) / 255
    return tm, model, variables, image


def time_batch(net, tm, model, variables, image, batch: int, rounds: int, score_thresh) -> dict:
    import numpy as np
    import torch

    import archc
    ims = [image] * batch
    tensors = [torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))] * batch
    settings = {} if score_thresh is None else {"score_thresh": score_thresh}
    if score_thresh is not None:
        NETS[net][2](tm, score_thresh)

    def run_torch():
        with torch.no_grad():
            return tm(tensors)

    def run_archc():
        return archc.detect(model, variables, ims, **settings)
    t0 = time.perf_counter()
    first = run_archc()                   # compiles
    compile_s = time.perf_counter() - t0
    ref = run_torch()
    counts = (len(first[0]["boxes"]), len(ref[0]["boxes"]))
    times = {"torch": [], "archc": []}
    load0, cpu0 = harness.load1(), harness.cpu_jiffies()
    for r in range(rounds):
        order = (("torch", run_torch), ("archc", run_archc))
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {"batch": batch, "times": times, "compile_s": compile_s, "load": (load0, harness.load1()),
            "steal": harness.steal_pct(cpu0, harness.cpu_jiffies()), "counts": counts,
            "score_thresh": model.graph.declarations["detect"].score_thresh if score_thresh is None else score_thresh}


def render(net, rows, machine, date) -> str:
    begin, end = begin_end(net)
    title, what, _ = NETS[net]
    L = [begin, f"## Detection: `archc.detect` vs torchvision eager, {title} (bench/detect.py --net {net})", "",
         f"Run {date}; {machine['cpu']}, {machine['cores']} cores; "
         + ", ".join(f"{k} {v}" for k, v in machine["libs"].items() if k in ("jax", "torch", "torchvision")) + ".",
         "Images/s, float32, the 512x512 astronaut repeated to the batch, 91 classes, random weights (the same in "
         f"both, imported); both the whole pipeline ({what}), boxes rescaled to the original image. "
         "Ratio = median over interleaved rounds of torch time / archc time.", "",
         "| batch | score thresh | detections (archc / torch) | archc.detect | torchvision eager | archc ÷ torch "
         "| archc compile (s) | load / steal |",
         "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, t = r["batch"], r["times"]
        ips = {k: b / statistics.median(v) for k, v in t.items()}
        ratio = statistics.median(tt / ta for ta, tt in zip(t["archc"], t["torch"]))
        L.append(f"| {b} | {r['score_thresh']:g} | {r['counts'][0]} / {r['counts'][1]} | {ips['archc']:.2f} | "
                 f"{ips['torch']:.2f} | **{ratio:.2f}** | {r['compile_s']:.1f} | "
                 f"{r['load'][0]:.1f}–{r['load'][1]:.1f} / {r['steal']:.0f} % |")
    L += ["", end]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", choices=sorted(NETS), default="ssd300_vgg16")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--score-thresh", nargs="+", type=float, default=[None],
                    help="detection score thresholds, a row set each (default: the network's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=600, help="seconds to wait for a quiet machine (0: do not)")
    ap.add_argument("--out", help="BENCHMARKS.md: replace (or append) this network's detection section")
    args = ap.parse_args(argv)
    harness.wait_for_load(args.max_load, args.wait, args.wait > 0)
    tm, model, variables, image = setup(args.net)
    rows = [time_batch(args.net, tm, model, variables, image, b, args.rounds, t)
            for t in args.score_thresh for b in args.batches]
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = render(args.net, rows, harness.machine(), date)
    print(text)
    if args.out:
        begin, end = begin_end(args.net)
        p = Path(args.out)
        old = p.read_text() if p.exists() else ""
        if begin in old and end in old:
            new = old[:old.index(begin)] + text + old[old.index(end) + len(end):]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        p.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
