"""archc's detection training step against torchvision eager on the same network, weights and
batch (issue 24's speed table): one SGD update each, timed in one process, alternating.

    python bench/detection_train_step.py --net ssd300_vgg16 [--batch 8] [--rounds 4] [--steps 1] [--breakdown]

archc: ``archc.runtime.tasks.make_train_step`` with the Detection task (its losses: ssd_loss.py,
rcnn_loss.py), jitted, ``optax.sgd(1e-3, momentum=0.9)``, batch statistics updated; the batch
already through the input transform (a data-pipeline step in archc). torchvision:
``model.train()``, ``loss = sum(model(images, targets).values())``, ``backward()``,
``torch.optim.SGD(lr=1e-3, momentum=0.9).step()`` (its forward includes its transform). Both
float32, 91 classes, torchvision's random weights (fixed seed) imported into archc, synthetic
images at the network's input size with 3 boxes each. Warm-up (compile, first steps) excluded;
then rounds of ``--steps`` steps of each, the order alternating per round; the ratio per round is
torchvision's time / archc's (> 1: archc faster). ``--breakdown``: archc's jitted forward alone
and forward + losses (no gradient), to say where its step's time goes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

NETS = {"ssd300_vgg16": ("SSD300-VGG16", 8, 300),
        "fasterrcnn_mobilenet_v3_large_320_fpn": ("Faster R-CNN MobileNetV3-Large 320 FPN", 4, 320),
        "ssdlite320_mobilenet_v3_large": ("SSDlite320-MobileNetV3-Large", 16, 320)}
LR = 1e-3


def synthetic(batch: int, size: int, seed: int = 0):
    """Images in [0, 1] (H, W, 3) and 3 boxes a image (xyxy pixels, labels 1..90)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    images = [rng.uniform(0, 1, (size, size, 3)).astype(np.float32) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = rng.uniform(0, size * 0.6, (3, 2))
        wh = rng.uniform(size * 0.1, size * 0.4, (3, 2))
        targets.append({"boxes": np.concatenate([xy, xy + wh], 1).astype(np.float32),
                        "labels": rng.integers(1, 91, 3).astype(np.int64)})
    return images, targets


def quartiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", choices=sorted(NETS), required=True)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1, help="timed steps of each per round")
    ap.add_argument("--breakdown", action="store_true")
    a = ap.parse_args()
    import jax
    import numpy as np
    import optax
    import torch
    import torchvision

    import archc
    from archc.detection.task import detection_batch
    from archc.runtime.tasks import forward_fn, make_task, make_train_step, train_state
    from archc.runtime.weights import import_weights
    torch.set_num_threads(2)
    title, default_batch, size = NETS[a.net]
    batch = a.batch or default_batch

    torch.manual_seed(0)
    tm = getattr(torchvision.models.detection, a.net)(weights=None, weights_backbone=None, num_classes=91)
    with tempfile.TemporaryDirectory() as d:
        torch.save(tm.state_dict(), f"{d}/model.pth")
        model = archc.load(a.net, classes=91)
        variables, report = import_weights(model, f"{d}/model.pth", source="torchvision")
    assert report.ok
    images, targets = synthetic(batch, size)

    # archc
    task = make_task(model)
    tx = optax.sgd(LR, momentum=0.9)
    step = make_train_step(task, tx, bn="update")
    state = train_state(task, tx, variables)
    jbatch = detection_batch(task, images, targets)

    def run_archc(n):
        nonlocal state
        for _ in range(n):
            state, m = step(state, jbatch)
        return float(jax.block_until_ready(m["loss"]))

    # torchvision
    tm.train()
    opt = torch.optim.SGD(tm.parameters(), lr=LR, momentum=0.9)
    t_images = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))) for im in images]
    t_targets = [{"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"])} for t in targets]

    def run_torch(n):
        for _ in range(n):
            opt.zero_grad()
            loss = sum(tm(t_images, t_targets).values())
            loss.backward()
            opt.step()
        return loss.item()

    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    loss_a = run_archc(1)
    compile_s = time.perf_counter() - t
    run_archc(1)
    loss_t = run_torch(1)
    run_torch(1)
    ta, tt = [], []
    for r in range(a.rounds):
        order = ((run_archc, ta), (run_torch, tt)) if r % 2 == 0 else ((run_torch, tt), (run_archc, ta))
        for fn, out in order:
            t = time.perf_counter()
            fn(a.steps)
            out.append((time.perf_counter() - t) / a.steps)
    load1 = os.getloadavg()[0]
    ratios = [y / x for x, y in zip(ta, tt)]
    qa, qt, qr = quartiles(ta), quartiles(tt), quartiles(ratios)
    print(f"{title}, batch {batch}, {size}x{size}, float32; {a.rounds} rounds x {a.steps} steps, alternating; "
          f"first losses archc {loss_a:.3f} torchvision {loss_t:.3f}; archc compile {compile_s:.0f} s; "
          f"load {load0:.1f} -> {load1:.1f}")
    print(f"| {title} | {batch} | {qa[1] * 1e3:.0f} ({qa[0] * 1e3:.0f}–{qa[2] * 1e3:.0f}) "
          f"| {qt[1] * 1e3:.0f} ({qt[0] * 1e3:.0f}–{qt[2] * 1e3:.0f}) | **{qr[1]:.2f}** ({qr[0]:.2f}–{qr[2]:.2f}) "
          f"| {load0:.1f} → {load1:.1f} |")

    if a.breakdown:
        # where archc's step goes: the forward alone, forward + losses, (the step above: + backward + update)
        forward = forward_fn(task, train=True)
        params, stats = {**state["frozen"], **state["trainable"]}, state["batch_stats"]
        rng = jax.random.PRNGKey(1)
        fwd = jax.jit(lambda p, s, b: forward(p, s, b, rng)[0])
        fwd_loss = jax.jit(lambda p, s, b: sum(task.losses(forward(p, s, b, rng)[0], b, rng).values()))
        for name, fn in (("forward", fwd), ("forward + losses", fwd_loss)):
            jax.block_until_ready(fn(params, stats, jbatch))
            times = []
            for _ in range(max(a.rounds // 2, 2)):
                t = time.perf_counter()
                jax.block_until_ready(fn(params, stats, jbatch))
                times.append(time.perf_counter() - t)
            print(f"archc {name}: median {statistics.median(times) * 1e3:.0f} ms")
        print(f"archc whole step: median {statistics.median(ta) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
