"""archc.make_train_step against a plain hand-written jitted step (apply_fn + optax + cross-entropy,
as bench/harness.py's training worker and the Trainer before tasks), in one process, alternating:
does the Task layer (metric sums, frozen/trainable split, donation) cost anything?

    .venv/bin/python bench/train_step_ab.py [--net resnet18] [--batch 32] [--size 224] [--rounds 6]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import archc
from archc.runtime.tasks import make_task, make_train_step, train_state


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    a = ap.parse_args()
    model = archc.load(a.net, classes=10, input_shape=(a.size, a.size, 3)) if a.size != 224 else archc.load(a.net, classes=10)
    variables = model.init(0)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(0, 1, (a.batch,) + tuple(model.input_shape)).astype(np.float32)),
             "label": jnp.asarray(rng.integers(0, 10, a.batch).astype(np.int32))}
    tx = optax.sgd(0.01, momentum=0.9)

    # A: the plain step
    def plain_loss(params, stats, x, y):
        logits, new = model.apply_fn({"params": params, "batch_stats": stats}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

    @jax.jit
    def plain_step(params, stats, opt, x, y):
        (loss, stats), g = jax.value_and_grad(plain_loss, has_aux=True)(params, stats, x, y)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), stats, opt, loss

    pa = jax.tree.map(jnp.array, variables["params"])
    sa, oa = jax.tree.map(jnp.array, variables["batch_stats"]), tx.init(pa)
    # B: archc's public step
    task = make_task(model)
    step = make_train_step(task, tx)
    state = train_state(task, tx, variables)

    def run_a(n):
        nonlocal pa, sa, oa
        for _ in range(n):
            pa, sa, oa, loss = plain_step(pa, sa, oa, batch["image"], batch["label"])
        jax.block_until_ready(loss)

    def run_b(n):
        nonlocal state
        for _ in range(n):
            state, m = step(state, batch)
        jax.block_until_ready(m["loss"])

    run_a(1), run_b(1)                                  # compile
    ta, tb = [], []
    for r in range(a.rounds):
        for name, fn, out in (("a", run_a, ta), ("b", run_b, tb))[:: 1 if r % 2 == 0 else -1]:
            t = time.perf_counter()
            fn(a.steps)
            out.append((time.perf_counter() - t) / a.steps)
    ratios = [x / y for x, y in zip(ta, tb)]
    print(f"{a.net} batch {a.batch} {a.size}x{a.size}, {cpu_name()}, {a.rounds} rounds x {a.steps} steps, alternating")
    print(f"plain jitted step      median {statistics.median(ta) * 1e3:8.1f} ms/step")
    print(f"archc.make_train_step  median {statistics.median(tb) * 1e3:8.1f} ms/step")
    print(f"speed of make_train_step relative to the plain step: median {statistics.median(ratios):.3f}x "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
