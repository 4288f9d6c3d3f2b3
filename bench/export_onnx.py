"""ONNX Runtime on archc's ONNX export vs ONNX Runtime on torch.onnx.export of the torchvision
twin, and archc on XLA vs archc on ONNX Runtime -> a section of BENCHMARKS.md.

    python bench/export_onnx.py [--out BENCHMARKS.md] [--nets resnet50 mobilenet_v2 efficientnet_b0]

Reuses the harness (bench/harness.py): one subprocess per network, in which archc (XLA),
archc-onnx (archc.export on ONNX Runtime) and onnxruntime (torch.onnx.export on ONNX Runtime)
are set up in turn and then timed interleaved, order rotating per round; each ratio is the
median over rounds of the two engines' times in that round (the host's speed drifts).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

NETS = ["resnet50", "mobilenet_v2", "efficientnet_b0"]
FRAMEWORKS = "archc,archc-onnx,onnxruntime"
BEGIN, END = "<!-- export:begin -->", "<!-- export:end -->"


def ratio(res: dict, batch, a: str, b: str) -> float:
    """Median over rounds of time(b) / time(a): a's speed relative to b."""
    t = res["times"][batch]
    return statistics.median(tb / ta for ta, tb in zip(t[a]["s_per_call"], t[b]["s_per_call"]))


def render(results: list, machine: dict, date: str) -> str:
    L = [BEGIN, "## Export: archc's ONNX on ONNX Runtime (bench/export_onnx.py)", "",
         f"Run {date}; {machine['cpu']}, {machine['cores']} cores; "
         + ", ".join(f"{k} {v}" for k, v in machine["libs"].items() if k in ("jax", "torch", "onnx", "onnxruntime")) + ".",
         "Images/s, float32, random inputs, same weights for archc (XLA) and archc-onnx (NCHW export, symbolic batch); "
         "onnxruntime = `torch.onnx.export` (opset 17) of the torchvision twin. Both ONNX models run on ONNX Runtime "
         "(CPU, all graph optimisations, 2 intra-op threads); XLA uses its default threads. "
         "Ratios are medians over interleaved rounds.", "",
         "| network | batch | archc/XLA | archc-onnx | torch.onnx | archc-onnx ÷ torch.onnx | archc/XLA ÷ archc-onnx | load / steal |",
         "|---|---|---|---|---|---|---|---|"]
    for res in results:
        steal = harness.steal_pct(res["cpu_start"], res["cpu_end"])
        for b in res["batches"]:
            ips = res["ips"][b]
            L.append(f"| {res['net']} | {b} | {ips['archc']:.1f} | {ips['archc-onnx']:.1f} | {ips['onnxruntime']:.1f} | "
                     f"**{ratio(res, b, 'archc-onnx', 'onnxruntime'):.2f}** | {ratio(res, b, 'archc', 'archc-onnx'):.2f} | "
                     f"{res['load_start']:.1f}–{res['load_end']:.1f} / {steal:.0f} % |")
    L += ["", "Export and session creation (s): " + "; ".join(
        f"{r['net']} archc {r['frameworks']['archc-onnx']['export_s']:.1f} + {r['frameworks']['archc-onnx']['session_s']:.2f}, "
        f"torch {r['frameworks']['onnxruntime']['export_s']:.1f} + {r['frameworks']['onnxruntime']['session_s']:.2f}"
        for r in results) + ".", "", END]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=NETS)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--runs32", type=int, default=5)
    ap.add_argument("--runs1", type=int, default=5)
    ap.add_argument("--out", help="Markdown file whose export section to add/replace")
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=120)
    args = ap.parse_args(argv)
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    results = []
    for net in args.nets:
        harness.wait_for_load(args.max_load, args.wait, True)
        res = harness.call_worker(["net", net, args.batches, args.runs32, args.runs1, FRAMEWORKS, ""])
        res["batches"] = [str(b) for b in res["batches"]]
        results.append(res)
    text = render(results, harness.machine(), date)
    print(text)
    if args.out:
        path = Path(args.out)
        old = path.read_text()
        path.write_text(old[:old.index(BEGIN)] + text + old[old.index(END) + len(END):] if BEGIN in old
                        else old.rstrip() + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
