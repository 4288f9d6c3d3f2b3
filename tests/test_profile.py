"""`archc bench --profile`: per-kernel times named by the IR nodes fused into each kernel."""
from __future__ import annotations

import json

import jax
import pytest

import archc
from archc.cli import main
from archc.runtime.profile import describe_nodes, profile_model

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the profile reads XLA:CPU thunks")


def test_profile_names_every_conv_and_adds_up():
    model = archc.load("lenet5")
    p = profile_model(model, batch=4, runs=2)
    ops = {n.name: n.op for n in model.graph}
    profiled = {n for row in p["kernels"] for n in row["nodes"]}
    assert profiled <= set(ops)                                   # names are IR nodes
    convs = {n for n, op in ops.items() if op in ("conv", "dense")}
    assert convs <= profiled, convs - profiled                     # every conv/dense is timed
    assert p["kernels"] and all(r["ms"] >= 0 for r in p["kernels"])
    assert abs(sum(p["by_op"].values()) - p["kernel_ms"]) < 1e-6 * max(1.0, p["kernel_ms"])
    assert p["kernels"] == sorted(p["kernels"], key=lambda r: -r["ms"])
    assert p["wall_ms"] > 0


def test_describe_nodes_shortens_siblings():
    assert describe_nodes(["layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu1"]) == "layer1.0.conv1 +bn1 +relu1"
    assert describe_nodes([]) == "-"


def test_cli_profile_json(capsys):
    assert main(["bench", "lenet5", "--profile", "--batch", "2", "--repeats", "1", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["name"] == "lenet5" and p["by_op"]
    assert main(["bench", "lenet5", "--profile", "--batch", "2", "--repeats", "1", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "by IR op" in out and "more kernels" in out
