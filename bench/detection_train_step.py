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

``--device cuda`` (bench/gpu_bench.py): torchvision on the GPU, channels_last; ``--dtype
bfloat16``: archc's mixed-precision policy against PyTorch's autocast to bfloat16;
``--frameworks archc torch-eager torch.compile``: which steps to time (alternating; default archc
and torchvision eager); ``--json FILE``: the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
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


FRAMEWORKS = ("archc", "torch-eager", "torch.compile")


def measure(net: str, batch: int | None = None, rounds: int = 4, steps: int = 1, device: str = "cpu",
            dtype: str = "float32", frameworks=("archc", "torch-eager"), breakdown: bool = False) -> dict:
    """The training steps of ``frameworks`` (of FRAMEWORKS), alternating: seconds per step, compile
    times (the first step's wall time) and first losses; ``ratio``: torchvision's time / archc's
    per round, when both ran."""
    import jax
    import numpy as np
    import optax
    import torch
    import torchvision

    import archc
    from archc.detection.task import detection_batch
    from archc.runtime.tasks import forward_fn, make_task, make_train_step, train_state
    from archc.runtime.weights import import_weights
    from peers import torch_device_setup
    if device == "cpu":
        torch.set_num_threads(2)
    dev, memory_format, sync = torch_device_setup(device)
    title, default_batch, size = NETS[net]
    batch = batch or default_batch
    bf16 = dtype == "bfloat16"

    torch.manual_seed(0)
    tm = getattr(torchvision.models.detection, net)(weights=None, weights_backbone=None, num_classes=91)
    with tempfile.TemporaryDirectory() as d:
        torch.save(tm.state_dict(), f"{d}/model.pth")
        model = archc.load(net, classes=91)
        variables, report = import_weights(model, f"{d}/model.pth", source="torchvision")
    assert report.ok
    images, targets = synthetic(batch, size)

    # archc (built only where it runs: on a GPU, JAX would otherwise take most of its memory in a
    # process that times PyTorch)
    task = make_task(model) if "archc" in frameworks else None
    if task is not None:
        tx = optax.sgd(LR, momentum=0.9)
        step = make_train_step(task, tx, bn="update", dtype="bfloat16" if bf16 else None)
        state = train_state(task, tx, variables)
        jbatch = detection_batch(task, images, targets)

    def run_archc(n):
        nonlocal state
        for _ in range(n):
            state, m = step(state, jbatch)
        return float(jax.block_until_ready(m["loss"]))

    # torchvision
    tm.train().to(dev, memory_format=memory_format)
    opt = torch.optim.SGD(tm.parameters(), lr=LR, momentum=0.9)
    t_images = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).to(dev) for im in images]
    t_targets = [{"boxes": torch.from_numpy(t["boxes"]).to(dev), "labels": torch.from_numpy(t["labels"]).to(dev)}
                 for t in targets]

    def torch_runner(forward):
        def run(n):
            for _ in range(n):
                opt.zero_grad()
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = sum(forward(t_images, t_targets).values())
                loss.backward()
                opt.step()
            sync()
            return loss.item()
        return run
    from peers import torch_compile
    runners = {"archc": run_archc, "torch-eager": torch_runner(tm), "torch.compile": torch_runner(torch_compile(tm))}
    runners = {name: runners[name] for name in frameworks}

    out = {"net": net, "title": title, "batch": batch, "size": size, "dtype": dtype, "device": device,
           "load_start": os.getloadavg()[0], "compile_s": {}, "first_loss": {}}
    for name, run in runners.items():           # compile (archc: XLA; torch.compile: Inductor), then warm
        t = time.perf_counter()
        out["first_loss"][name] = run(1)
        out["compile_s"][name] = time.perf_counter() - t
        run(1)
    times = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            runners[name](steps)
            times[name].append((time.perf_counter() - t) / steps)
    out.update(load_end=os.getloadavg()[0], s_per_step=times,
               ratio={name: [y / x for x, y in zip(times["archc"], ts)] for name, ts in times.items()
                      if name != "archc" and "archc" in times})

    if breakdown and "archc" in frameworks:
        # where archc's step goes: the forward alone, forward + losses, (the step above: + backward + update)
        forward = forward_fn(task, train=True)
        params, stats = {**state["frozen"], **state["trainable"]}, state["batch_stats"]
        rng = jax.random.PRNGKey(1)
        fwd = jax.jit(lambda p, s, b: forward(p, s, b, rng)[0])
        fwd_loss = jax.jit(lambda p, s, b: sum(task.losses(forward(p, s, b, rng)[0], b, rng).values()))
        out["breakdown_s"] = {}
        for name, fn in (("forward", fwd), ("forward + losses", fwd_loss)):
            jax.block_until_ready(fn(params, stats, jbatch))
            ts = []
            for _ in range(max(rounds // 2, 2)):
                t = time.perf_counter()
                jax.block_until_ready(fn(params, stats, jbatch))
                ts.append(time.perf_counter() - t)
            out["breakdown_s"][name] = statistics.median(ts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", choices=sorted(NETS), required=True)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1, help="timed steps of each per round")
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--device", default="cpu", help="PyTorch's device (JAX uses its default one)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=["archc", "torch-eager"])
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    if "archc" not in a.frameworks:
        ap.error("--frameworks: archc is what the others are compared with")
    out = measure(a.net, a.batch, a.rounds, a.steps, a.device, a.dtype, a.frameworks, a.breakdown)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    ta = out["s_per_step"]["archc"]
    print(f"{out['title']}, batch {out['batch']}, {out['size']}x{out['size']}, {a.dtype}; {a.rounds} rounds x "
          f"{a.steps} steps, alternating; first losses "
          + ", ".join(f"{k} {v:.3f}" for k, v in out["first_loss"].items())
          + f"; archc compile {out['compile_s']['archc']:.0f} s; load {out['load_start']:.1f} -> {out['load_end']:.1f}")
    for name in out["ratio"]:
        qa, qt, qr = quartiles(ta), quartiles(out["s_per_step"][name]), quartiles(out["ratio"][name])
        print(f"| {out['title']} ({name}) | {out['batch']} | {qa[1] * 1e3:.0f} ({qa[0] * 1e3:.0f}–{qa[2] * 1e3:.0f}) "
              f"| {qt[1] * 1e3:.0f} ({qt[0] * 1e3:.0f}–{qt[2] * 1e3:.0f}) | **{qr[1]:.2f}** ({qr[0]:.2f}–{qr[2]:.2f}) "
              f"| {out['load_start']:.1f} → {out['load_end']:.1f} |")
    for name, s in out.get("breakdown_s", {}).items():
        print(f"archc {name}: median {s * 1e3:.0f} ms")
    if "breakdown_s" in out:
        print(f"archc whole step: median {statistics.median(ta) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
