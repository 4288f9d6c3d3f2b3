"""Makes docs/images/segmentation_overlay.png: a small same-padding U-Net (``unet`` with
``padding="same", width=16``) trained for a minute or two on scikit-image's coins photo, then
``archc segment`` on the whole photo.

No pretrained segmenter can be downloaded here, so the labels are a classical segmentation:
scikit-image's region-based recipe for this very photo (Sobel elevation map, watershed from
markers below 30 and above 150, holes filled): coin / background. The network trains on random
64x64 crops of the left two thirds of the photo; the right third is held out, and its mIoU
against the classical mask is printed. Training uses archc's Python API (the Segmentation task,
make_train_step, optax); the weights record the network, the normalisation and the class names,
so the picture comes from the command line as a user would run it:

    PYTHONPATH=. python docs/images/segmentation_overlay.py [--steps 200] [--out docs/images]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

# The library's U-Net with padded convs (output at the input's size) and 16 channels at its first level.
PARAMS = {"padding": "same", "width": 16}
CLASSES = ["background", "coin"]
CROP, HELD_OUT = 64, 256          # training crops come from columns [0, 256); the rest is held out


def classical_mask(coins: np.ndarray) -> np.ndarray:
    """scikit-image's region-based segmentation of the coins photo: 1 = coin, 0 = background."""
    from scipy import ndimage as ndi
    from skimage import filters, segmentation
    markers = np.zeros_like(coins)
    markers[coins < 30], markers[coins > 150] = 1, 2
    coin = segmentation.watershed(filters.sobel(coins), markers) == 2
    return ndi.binary_fill_holes(coin).astype(np.int32)


def batches(image: np.ndarray, mask: np.ndarray, size: int, seed: int):
    """Random CROPxCROP crops of the training columns, flipped at random: {"image", "label"}."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[0], HELD_OUT
    while True:
        ys, xs = rng.integers(0, h - CROP + 1, size), rng.integers(0, w - CROP + 1, size)
        im = np.stack([image[y:y + CROP, x:x + CROP] for y, x in zip(ys, xs)])
        lab = np.stack([mask[y:y + CROP, x:x + CROP] for y, x in zip(ys, xs)])
        flip = rng.random(size) < 0.5
        im[flip], lab[flip] = im[flip, :, ::-1], lab[flip, :, ::-1]
        yield {"image": (im[..., None] / 255.0).astype(np.float32), "label": lab.astype(np.int32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        make(args.steps, Path(args.out), Path(work))


def make(steps: int, out: Path, work: Path) -> None:
    """Train for `steps`, segment the photo in `work`, copy the overlay into `out`."""
    import optax
    from PIL import Image
    from skimage import data

    import archc
    from archc.cli import main as cli
    from archc.runtime.record import inference_metadata
    from archc.runtime.tasks import Segmentation, make_train_step, train_state

    coins = data.coins()
    mask = classical_mask(coins)
    model = archc.load("unet", input_shape=(CROP, CROP, 1), **PARAMS)
    task = Segmentation(model, classes=CLASSES)
    optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, steps))
    state = train_state(task, optimizer, model.init(seed=0))
    step = make_train_step(task, optimizer)
    start = time.time()
    for i, batch in zip(range(steps), batches(coins, mask, 16, seed=0)):
        state, metrics = step(state, batch)
        if i % 50 == 0 or i == steps - 1:
            print(f"step {i:4d}  loss {float(metrics['loss']):.4f}  ({time.time() - start:.0f} s)")
    variables = {"params": {**state["frozen"], **state["trainable"]}, "batch_stats": state["batch_stats"]}
    weights = work / "coins_unet.safetensors"
    archc.save_variables(variables, weights, metadata=inference_metadata(
        model, spec="unet", params=PARAMS, preprocess="unit", classes=CLASSES, task="segmentation"))

    photo = work / "coins.png"
    Image.fromarray(coins).save(photo)
    if cli(["segment", "--weights", str(weights), str(photo), "--out", str(work)]) != 0:
        raise SystemExit("archc segment failed")
    predicted = np.asarray(Image.open(work / "coins_mask.png")).astype(np.int64)
    for name, cols in (("training columns", slice(0, HELD_OUT)), ("held-out columns", slice(HELD_OUT, None))):
        cm = np.bincount(2 * mask[:, cols].ravel() + predicted[:, cols].ravel(), minlength=4).reshape(2, 2)
        iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
        print(f"{name}: mIoU {iou.mean():.3f} (background {iou[0]:.3f}, coin {iou[1]:.3f}) against the classical mask")
    target = out / "segmentation_overlay.png"
    shutil.copy(work / "coins_overlay.png", target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
