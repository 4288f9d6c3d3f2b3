"""Resume from any moment: a run SIGKILLed at three moments (before its first checkpoint, in the
middle of an epoch after a step checkpoint, at a step checkpoint of the last epoch) and resumed
each time with `archc train --resume` ends with the per-epoch metrics of a run never
interrupted, and weights that load."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from train_helpers import ROOT, run_cli, write_random

from archc.runtime.run_state import has_checkpoint
from archc.runtime.train import HOLD_ENV

PER_EPOCH = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_top5", "lr")


def _kill_at(args, step: int) -> str:
    """Run ``archc ARGS`` until it holds after ``step``, then SIGKILL it; its stderr so far."""
    env = {**os.environ, HOLD_ENV: str(step),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-m", "archc", *map(str, args)], stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True, env=env, cwd=str(ROOT))
    lines = []
    for line in p.stderr:
        lines.append(line)
        if line.startswith(f"holding at step {step}"):
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL, "".join(lines)
    return "".join(lines)


@pytest.mark.slow          # five runs of archc in subprocesses: about 2 minutes on 2 cores
def test_sigkill_at_three_moments_and_resume(tmp_path):
    import archc
    data = write_random(tmp_path / "data", classes=3, per_class=12, mode="L")
    # 30 training images, batch 8: 3 steps an epoch, 9 in all; a checkpoint every 2 steps
    args = ["lenet5", "--data", data, "--epochs", 3, "--batch", 8, "--seed", 3, "--optimizer", "adamw",
            "--lr", 3e-3, "--schedule", "cosine", "--crop-scale", "0.5,1", "--save-every", 2, "--quiet"]
    full = run_cli(["train", *args, "--out", tmp_path / "full"])
    assert full.returncode == 0, full.stderr

    run = tmp_path / "run"
    err = _kill_at(["train", *args, "--out", run], 1)                 # before any checkpoint
    assert not has_checkpoint(run), err
    err = _kill_at(["train", "--resume", run, "--quiet"], 5)          # epoch 2, after step 4's checkpoint
    assert "no checkpoint yet" in err
    err = _kill_at(["train", "--resume", run, "--quiet"], 8)          # epoch 3, at step 8's checkpoint
    assert "after epoch 1, batch 1" in err
    last = run_cli(["train", "--resume", run, "--quiet"])
    assert last.returncode == 0, last.stderr
    assert "after epoch 2, batch 2" in last.stderr

    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    assert a["epoch"] == b["epoch"] == [1, 2, 3]
    for key in PER_EPOCH:
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6, err_msg=key)
    assert a["best_epoch"] == b["best_epoch"]
    variables = archc.load_variables(str(run / "best.safetensors"))
    full_vars = archc.load_variables(str(tmp_path / "full" / "best.safetensors"))
    x = np.random.default_rng(0).random((2, 32, 32, 1), np.float32)
    model = archc.load("lenet5")
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), np.asarray(model.apply(full_vars, x)),
                               rtol=0, atol=1e-6)
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
