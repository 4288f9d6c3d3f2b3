"""Parse and shape-check a generated network of N residual blocks (issue: < 0.5 s for 1,000).

    python bench/parse_check.py [--blocks 1000] [--repeats 5]

Each block is written out on its own line (no repetition shorthand; the stride only where a stage
starts, as a person would write it), so the parser sees the whole text: ~1,000 lines, ~7,000 nodes.
"""
from __future__ import annotations

import argparse
import statistics
import time

from archc.compiler.build import build_graph
from archc.compiler.stats import summarize
from archc.spec.parser import parse


def generate(blocks: int) -> str:
    lines = ["input 32x32x16", "block unit(c, s=1) = residual<conv3(c, s=s) bn relu conv3(c) bn> relu"]
    widths = [16, 32, 64, 128]
    per_stage = blocks // len(widths)
    for i in range(blocks):
        stage = min(i // per_stage, len(widths) - 1)
        stride = 2 if i and i % per_stage == 0 and stage < len(widths) else 1
        lines.append(f"unit({widths[stage]}, s=2)" if stride == 2 else f"unit({widths[stage]})")
    lines.append("gap fc(10)")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    text = generate(args.blocks)
    parse(text)  # warm the grammar cache (built once per process)
    times_parse, times_total = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        parse(text, "gen.arch")
        t1 = time.perf_counter()
        g = build_graph(text=text, filename="gen.arch")
        summarize(g)
        t2 = time.perf_counter()
        times_parse.append(t1 - t0)
        times_total.append(t2 - t1)
    print(f"{args.blocks} residual blocks, {len(text.splitlines())} lines, {len(g.nodes)} nodes")
    print(f"parse:                    median {statistics.median(times_parse) * 1e3:.1f} ms")
    print(f"parse + check + counts:   median {statistics.median(times_total) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
