"""Several processes, for real: ``archc train --coordinator HOST:PORT --num-processes 2
--process-id I`` on this machine, two processes with two CPU devices each (collectives through
gloo), against one process with four devices:

* the same run (per-epoch losses, validation losses, final weights) within 1e-5;
* only process 0 writes: process 1 is given its own ``--out``, which must never appear;
* process 1 killed in the middle of epoch 2: process 0 stops at once with a clear message
  (exit status 4) instead of hanging; ``--resume`` of both then ends bit-identical to the
  uninterrupted two-process run.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import ROOT, write_random  # noqa: E402

from archc.runtime.parallel import EXIT_PEER  # noqa: E402
from archc.runtime.run_state import read_latest  # noqa: E402
from archc.runtime.train import CRASH_ENV  # noqa: E402

TIMEOUT_S = 300          # per run; a hang fails the test instead of the suite
PEER_TIMEOUT_S = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(devices: int, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env.update({"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}, **(extra or {}))
    return env


def launch(args, devices: int, extra_env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "archc", *map(str, args)], cwd=str(ROOT),
                            env=env_for(devices, extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen) -> tuple[int, str, float]:
    """(status, stderr, time it exited), killing it after TIMEOUT_S."""
    try:
        _, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        raise AssertionError(f"a training process hung for {TIMEOUT_S} s:\n{err[-3000:]}")
    return p.returncode, err, time.monotonic()


def two_processes(args, outs, env=(None, None)):
    """Run process 0 and 1 with ``args``, ``--out outs[i]`` (None: none given) and env[i];
    -> [(status, stderr, exit time)] in process order, as they exit."""
    port = free_port()
    procs = []
    for i in (0, 1):
        dist = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", 2, "--process-id", i,
                "--peer-timeout", PEER_TIMEOUT_S]
        procs.append(launch([*args, *dist, *(["--out", outs[i]] if outs[i] else [])], 2, env[i]))
    waiting = dict(enumerate(procs))
    results = {}
    deadline = time.monotonic() + TIMEOUT_S
    while waiting:                  # note each exit time as it happens
        for i, p in list(waiting.items()):
            if p.poll() is not None:
                results[i] = finish(p)
                del waiting[i]
        if time.monotonic() > deadline:
            for p in waiting.values():
                p.kill()
            raise AssertionError(f"processes {sorted(waiting)} hung for {TIMEOUT_S} s")
        time.sleep(0.1)
    return [results[0], results[1]]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def tensors(path: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(path))


def test_two_processes_match_one_and_survive_a_death(tmp_path):
    data = write_random(tmp_path / "data", classes=4, per_class=12, size=(16, 16), mode="RGB",
                        layout="split")
    # 48 training images, batch 16: 3 steps an epoch; batch norm, so its statistics must be
    # over the global batch; the default augmentation, so each process crops its own slice
    args = ["train", "cifar_resnet_v1", "--data", data, "--input", "16x16x3", "--classes", 4,
            "--epochs", 3, "--batch", 16, "--lr", 5e-4, "--seed", 3, "--quiet"]

    one = tmp_path / "one"
    rc, err, _ = finish(launch([*args, "--out", one], 4))
    assert rc == 0, err

    two, never = tmp_path / "two", tmp_path / "process1"
    (rc0, err0, _), (rc1, err1, _) = two_processes(args, (two, never))
    assert (rc0, rc1) == (0, 0), err0 + err1
    assert not never.exists(), "process 1 wrote a run directory"
    a, b = metrics(one), metrics(two)
    assert a["epoch"] == b["epoch"] == [1, 2, 3]
    print(f"1 process x 4 devices: {a['train_loss']}\n2 processes x 2: {b['train_loss']}",
          file=sys.stderr)
    for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5, err_msg=key)
    ta, tb = tensors(one / "last.safetensors"), tensors(two / "last.safetensors")
    assert ta.keys() == tb.keys()
    for k in ta:
        np.testing.assert_allclose(tb[k], ta[k], rtol=0, atol=1e-5, err_msg=k)

    # process 1 dies after step 5 (epoch 2, batch 2): process 0 must not hang
    run = tmp_path / "killed"
    (rc0, err0, t0), (rc1, _, t1) = two_processes(args, (run, run), env=(None, {CRASH_ENV: "5"}))
    assert rc1 == 86
    assert rc0 == EXIT_PEER, err0
    assert "error: process 0:" in err0 and "Resume the run with --resume" in err0
    assert "Traceback" not in err0
    print(f"process 0 stopped {t0 - t1:.1f} s after process 1 died", file=sys.stderr)
    assert t0 - t1 < PEER_TIMEOUT_S + 15
    assert metrics(run)["epoch"] == [1]

    (rc0, err0, _), (rc1, err1, _) = two_processes(["train", "--resume", run, "--quiet"], (None, None))
    assert (rc0, rc1) == (0, 0), err0 + err1
    assert "after epoch 1" in err0
    b, c = metrics(two), metrics(run)
    for key in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "best_epoch"):
        assert b[key] == c[key], key
    fb, fc = tensors(two / "last.safetensors"), tensors(run / "last.safetensors")
    assert fb.keys() == fc.keys()
    for k in fb:
        assert fb[k].tobytes() == fc[k].tobytes(), k
    import jax
    (sb, tb, db, _), (sc, tc, dc, _) = read_latest(two), read_latest(run)     # orbax's resume point
    assert (sb, db) == (sc, dc)
    for x, y in zip(jax.tree_util.tree_leaves(tb), jax.tree_util.tree_leaves(tc), strict=True):
        assert x.tobytes() == y.tobytes()


class FakeStore:
    """The coordinator's key-value store as PeerWatch uses it (jax raises NOT_FOUND errors)."""

    def __init__(self):
        self.kv, self.down = {}, False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
        self.kv[key] = value

    def key_value_try_get(self, key):
        if self.down:
            raise RuntimeError("UNAVAILABLE: failed to connect to all addresses")
        if key not in self.kv:
            raise RuntimeError(f"NOT_FOUND: {key}")
        return self.kv[key]


def watch_until_abort(store, peer_beats: bool, seconds: float = 3.0, **change) -> str | None:
    """Run process 0's PeerWatch against ``store`` (the peer beating or not) -> why it aborted."""
    from archc.runtime.parallel import PeerWatch
    why = []

    class Watch(PeerWatch):
        def abort(self, reason):      # instead of os._exit: note why, end the thread
            why.append(reason)
            self._stop.set()

    w = Watch(timeout=0.5, interval=0.05, client=store, me=0, count=2)
    w.start()
    end = time.monotonic() + seconds
    beat = 0
    while time.monotonic() < end and not why:
        if peer_beats:
            beat += 1
            store.kv["archc/peer/beat/1"] = str(beat)
        for key, value in change.items():
            if key == "down":
                store.down = value
            else:
                store.kv[key] = value
        time.sleep(0.05)
    w._stop.set()
    return why[0] if why else None


def test_peer_watch_reasons():
    """A peer that stops beating (frozen, or its machine gone: no connection error to tell),
    one that failed, a coordinator that went away: each is named; a live peer and one that
    finished are not."""
    assert watch_until_abort(FakeStore(), peer_beats=True, seconds=1.5) is None
    done = FakeStore()
    done.kv["archc/peer/end/1"] = "done"
    assert watch_until_abort(done, peer_beats=False, seconds=1.5) is None
    assert "process 1 of 2 stopped responding" in watch_until_abort(FakeStore(), peer_beats=False)
    failed = FakeStore()
    failed.kv["archc/peer/end/1"] = "failed"
    assert "process 1 of 2 failed" in watch_until_abort(failed, peer_beats=True)
    assert "lost the coordinator" in watch_until_abort(FakeStore(), peer_beats=True, down=True)


def test_launch_options(capsys):
    """Half the options, a bad address or rank: one error line, before any process waits; srun
    and mpirun's tasks are recognised from their environment, an sbatch shell is one process."""
    from archc.cli import main
    from archc.runtime.parallel import cluster_size
    for args, msg in ((["--coordinator", "127.0.0.1:1234"], "needs --num-processes, --process-id"),
                      (["--coordinator", "node0", "--num-processes", 2, "--process-id", 0],
                       "expected HOST:PORT"),
                      (["--coordinator", "h:1", "--num-processes", 2, "--process-id", 2],
                       "--process-id must be in 0..1")):
        assert main(["train", "lenet5", "--data", "x", "--out", "y", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and "Traceback" not in err, err
    assert cluster_size({}) == 1
    assert cluster_size({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"}) == 1     # sbatch's shell
    assert cluster_size({"SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"}) == 4
    assert cluster_size({"OMPI_COMM_WORLD_SIZE": "2"}) == 2
