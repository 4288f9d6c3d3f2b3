"""--freeze-all-but-head means what it says: the head and every layer that the weights file did
not initialise (new, or of another shape) train; the trunk with weights stays bit-identical."""
from __future__ import annotations

import numpy as np

from train_helpers import run_cli, write_random

# The seeds' transfer-learning head: a new two-layer head on a trunk with weights.
NET = """param classes = 10
input 32x32x3
stem: conv3(8) bn relu maxpool2
body: conv3(16) bn relu
head: gap fc(256) relu dropout(0.3) fc(classes)
"""
TRUNK = """param classes = 10
input 32x32x3
stem: conv3(8) bn relu maxpool2
body: conv3(16) bn relu
head: gap fc(classes)
"""


def _flat(path):
    from safetensors.numpy import load_file
    return load_file(str(path))


def test_freeze_all_but_head_trains_a_new_two_layer_head_and_keeps_the_trunk(tmp_path):
    import archc
    from archc.runtime.variables_io import save_variables
    (tmp_path / "net.arch").write_text(NET)
    (tmp_path / "trunk.arch").write_text(TRUNK)
    # the trunk's weights: its own 10-way head, head.fc1 of another shape than the new one
    save_variables(archc.load(str(tmp_path / "trunk.arch")).init(seed=3), tmp_path / "trunk.safetensors")
    data = write_random(tmp_path / "data", classes=3, per_class=12, mode="RGB", layout="split")
    run = tmp_path / "run"
    r = run_cli(["train", tmp_path / "net.arch", "--data", data, "--classes", "3",
                 "--weights", tmp_path / "trunk.safetensors", "--freeze-all-but-head",
                 "--epochs", "2", "--batch", "8", "--optimizer", "adamw", "--out", run, "--quiet"])
    assert r.returncode == 0, r.stderr
    assert "trains: head" in r.stderr and "frozen: stem, body" in r.stderr, r.stderr
    before, after = _flat(tmp_path / "trunk.safetensors"), _flat(run / "last.safetensors")
    for key, value in before.items():
        if not key.split("/")[1].startswith("head."):
            assert after[key].tobytes() == value.tobytes(), key        # bit-identical trunk
    init = archc.load(str(tmp_path / "net.arch"), classes=3).init(seed=0)["params"]
    for node in ("head.fc1", "head.fc2"):
        assert not np.array_equal(after[f"params/{node}/kernel"], np.asarray(init[node]["kernel"])), node
    assert after["params/head.fc1/kernel"].shape == (16, 256)
    assert after["params/head.fc2/kernel"].shape == (256, 3)
