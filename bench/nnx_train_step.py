"""One training step on ResNet-18: archc's own (``apply_fn`` + optax under ``jax.jit``, as
``archc train`` builds it) against the same network as a Flax NNX module (``model.to_nnx``)
stepped by ``nnx.Optimizer`` under ``nnx.jit`` with ``nnx.value_and_grad``. Same process, same
variables, same batch, same optimizer (SGD with momentum 0.9); the steps alternate (ABBA) until
the time budget is spent and the ratio reported is the median of the per-pair ratios (this VM's
speed drifts with its neighbours'). Also checks that the NNX step lowers the loss on its batch.

    PYTHONPATH=. python bench/nnx_train_step.py --batch 8 --size 224 --seconds 120
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
import optax
from flax import nnx

import archc


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {len(jax.devices())} {jax.default_backend()} device(s), jax {jax.__version__}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seconds", type=float, default=120, help="time budget for the alternating pairs")
    ap.add_argument("--min-pairs", type=int, default=5)
    args = ap.parse_args(argv)

    model = archc.load("resnet18", input_shape=(args.size, args.size, 3))
    variables = jax.tree.map(np.asarray, model.init(0))   # host copies: the archc step donates its own
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32)
    y = rng.integers(0, 1000, args.batch)
    tx = optax.sgd(0.01, momentum=0.9)

    def loss_of(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # archc: a pure step on the variables dict
    def archc_step(state, x):
        def f(params):
            logits, new = model.apply_fn({"params": params, "batch_stats": state["batch_stats"]}, x, train=True)
            return loss_of(logits), new["batch_stats"]
        (loss, stats), grads = jax.value_and_grad(f, has_aux=True)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "batch_stats": stats, "opt": opt}, loss

    archc_jit = jax.jit(archc_step, donate_argnums=(0,))
    state = {**jax.tree.map(jax.numpy.asarray, variables), "opt": tx.init(variables["params"])}

    # NNX: the module and its optimizer, updated in place
    net = model.to_nnx(variables)
    optimizer = nnx.Optimizer(net, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(net, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda net: loss_of(net(x)))(net)
        optimizer.update(net, grads)
        return loss

    t = time.perf_counter()
    state, first_archc = archc_jit(state, x)
    jax.block_until_ready(state)
    compile_archc = time.perf_counter() - t
    t = time.perf_counter()
    first_nnx = nnx_step(net, optimizer, x)
    jax.block_until_ready(first_nnx)
    compile_nnx = time.perf_counter() - t
    after = float(nnx_step(net, optimizer, x))        # the loss after one step (train mode, as before)

    def run_archc():
        nonlocal state
        state, loss = archc_jit(state, x)
        jax.block_until_ready(loss)

    def run_nnx():
        jax.block_until_ready(nnx_step(net, optimizer, x))

    times = {"archc": [], "nnx": []}
    ratios, end, k = [], time.perf_counter() + args.seconds, 0
    while k < args.min_pairs or time.perf_counter() < end:
        order = (("archc", run_archc), ("nnx", run_nnx)) if k % 2 == 0 else (("nnx", run_nnx), ("archc", run_archc))
        pair = {}
        for name, fn in order:
            t = time.perf_counter()
            fn()
            pair[name] = time.perf_counter() - t
            times[name].append(pair[name])
        ratios.append(pair["nnx"] / pair["archc"])
        k += 1

    print(f"machine: {machine()}")
    print(f"ResNet-18 {args.size}x{args.size}, batch {args.batch}, SGD momentum 0.9, float32")
    print(f"first step (compile + run): archc {compile_archc:.1f} s, nnx {compile_nnx:.1f} s")
    print(f"loss on the batch: {float(first_nnx):.4f} before the NNX step, {after:.4f} after it "
          f"({'lower' if after < float(first_nnx) else 'NOT lower'}); archc's first step: {float(first_archc):.4f}")
    for name in times:
        print(f"{name:5} step: median {statistics.median(times[name]) * 1e3:.0f} ms over {len(times[name])} steps")
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"nnx / archc step time: median {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}, {q[2]:.3f}) "
          f"over {len(ratios)} alternating pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
