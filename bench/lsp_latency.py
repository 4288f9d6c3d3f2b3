"""Language-server latency per keystroke on DenseNet-121 (issue 15: under 100 ms per change).

    python bench/lsp_latency.py [--changes 40]

Drives `archc lsp` over stdio as an editor does: opens archc/architectures/densenet.arch (its
defaults are DenseNet-121), then sends whole-document changes that alternate the growth rate
between 32 and 33 (every shape after the stem changes) and times each change until its
diagnostics arrive: the full round trip (re-resolve, re-elaborate, re-index, publish).
"""
from __future__ import annotations

import argparse
import statistics
import time

from archc.compiler import library
from archc.lsp.client import Client


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=40)
    args = ap.parse_args()
    path = library.LIBRARY / "densenet.arch"
    text = path.read_text()
    edited = text.replace("param growth = 32", "param growth = 33")
    assert edited != text
    client = Client()
    try:
        uri = path.as_uri()
        t0 = time.perf_counter()
        client.open(uri, text)
        assert client.diagnostics(uri) == []
        first = time.perf_counter() - t0
        times = []
        for v in range(args.changes):
            t0 = time.perf_counter()
            client.change(uri, edited if v % 2 == 0 else text, v + 2)
            assert client.diagnostics(uri) == []
            times.append(time.perf_counter() - t0)
    finally:
        client.close()
    times.sort()
    ms = [1000 * t for t in times]
    print(f"DenseNet-121, {args.changes} changes over stdio: median {statistics.median(ms):.0f} ms, "
          f"p90 {ms[int(0.9 * len(ms))]:.0f} ms, max {ms[-1]:.0f} ms (open: {1000 * first:.0f} ms)")


if __name__ == "__main__":
    main()
