"""bench/gpu.sh, the GPU table's script, without a GPU: ``--dry-run`` assembles every measurement
on the CPU (stand-in networks, one step each) and writes the JSON and the markdown table; the
real run refuses a machine without a GPU in one line, before spending anything."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def _gpu_sh(*args, timeout):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_dry_run_assembles_every_measurement(tmp_path):
    """Slow tier: 8.5 to 16.6 min on 2 cores shared at load 14-20 (3.2 min of CPU time: XLA:CPU's
    compiles of the stand-ins' steps, SSD300's the largest), far over the default tier's ~60 s."""
    from gpu_bench import FAMILIES, JOBS
    r = _gpu_sh("--dry-run", "--out", str(tmp_path), timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert res["dry_run"] is True
    labels = [job[0] for job in JOBS]
    assert [j["label"] for j in res["jobs"]] == labels
    rows = {(row["label"], row["framework"]): row for row in res["rows"]}
    assert len(rows) == len(res["rows"]) and set(rows) == {(label, fw) for label in labels for fw in FAMILIES}
    for key, row in rows.items():
        assert row["status"] == "ok", (key, row)
        assert row["img_s"] > 0 and row["s_per_call"] > 0 and row["compile_s"] >= 0, (key, row)
    real = {job[2] for job in JOBS}
    assert {fw: set(b) for fw, b in res["builds"].items()} == {fw: real for fw in FAMILIES}
    assert all(v == "ok" for b in res["builds"].values() for v in b.values()), res["builds"]
    table = (tmp_path / "gpu_bench.md").read_text().splitlines()
    for label in labels:
        line = [t for t in table if t.startswith(f"| {label} |")]
        assert len(line) == 1, label
        cells = [c.strip() for c in line[0].strip("|").split("|")]
        assert all(float(c.replace(",", "")) > 0 for c in cells[4:9]), line      # img/s x3, the two ratios
    assert "Not measured" not in "\n".join(table)


def test_the_gpu_run_measures_the_issues_sizes():
    """What the device runs: batch 256 for ResNet-50 (bf16 and fp32, training and inference) and
    EfficientNet-B0, the detection step, each for archc, PyTorch eager and torch.compile."""
    from gpu_bench import FAMILIES, jobs_for
    jobs = {(j["net"], j["kind"], j["dtype"]): j for j in jobs_for(dry=False)}
    for key in [("resnet50", "train", "bfloat16"), ("resnet50", "train", "float32"), ("resnet50", "infer", "bfloat16"),
                ("resnet50", "infer", "float32"), ("efficientnet_b0", "train", "bfloat16"),
                ("efficientnet_b0", "infer", "bfloat16")]:
        assert jobs[key]["batch"] == 256 and jobs[key]["size"] == 224, key
    assert jobs[("ssd300_vgg16", "detect", "bfloat16")]["size"] == 300
    assert FAMILIES == ("archc", "torch-eager", "torch.compile")


def test_without_a_gpu_the_run_stops_in_one_line(tmp_path):
    r = _gpu_sh("--out", str(tmp_path), timeout=600)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "sees no GPU" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "gpu_bench.json").exists()
