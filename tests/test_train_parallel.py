"""Data parallelism: on 4 (forced CPU) devices the loss trajectory equals the 1-device one for
the same global batch. Runs in a subprocess: XLA_FLAGS must be set before JAX initialises."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import json
    import jax
    import numpy as np
    from archc.runtime.train import train

    rng = np.random.default_rng(0)
    y = np.arange(48) % 4
    x = np.clip(rng.normal(60 + 40 * y[:, None, None, None], 40, (48, 16, 16, 3)), 0, 255)
    x = x.astype(np.uint8)
    out = {"devices": jax.device_count()}
    for n in (1, 4):
        # cifar_resnet_v1 has batch norm: its statistics must be over the global batch
        r = train("cifar_resnet_v1", train_data=(x, y), val_data=(x[:20], y[:20]), classes=4,
                  input_shape=[16, 16, 3],
                  epochs=2, batch=16, devices=n, optimizer="sgd", lr=5e-4, augment=False,
                  progress=False, log=lambda m: None)
        out[n] = {"losses": r.step_losses, "val_loss": r.metrics["val_loss"],
                  "kernel": np.asarray(r.variables["params"]["block2.conv2"]["kernel"]).ravel()[:64].tolist()}
    print("RESULT" + json.dumps(out))
""")


def test_four_devices_match_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                       timeout=600, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr
    line = next(l for l in p.stdout.splitlines() if l.startswith("RESULT"))
    r = json.loads(line[len("RESULT"):])
    assert r["devices"] == 4
    one, four = r["1"], r["4"]
    assert len(one["losses"]) == 6
    print(f"1 device: {one['losses']}\n4 devices: {four['losses']}", file=sys.stderr)
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(four["val_loss"], one["val_loss"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(four["kernel"], one["kernel"], rtol=0, atol=1e-5)
