"""Image folders that the training tests write: scikit-learn's bundled digits, synthetic
shapes, and tiny random sets. Deterministic for a given seed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_digits(root: Path, val_fraction: float = 0.2) -> Path:
    """sklearn's 8x8 digits (1,797), upscaled to 24x24 and centred on a 32x32 canvas (as MNIST's
    28 in LeNet's 32); a fixed split into root/train and root/val (``val_fraction`` held out)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.rint(d.images / 16.0 * 255).astype(np.uint8)
    perm = np.random.default_rng(0).permutation(len(d.target))
    n_val = int(len(perm) * val_fraction)
    for rank, i in enumerate(perm):
        split = "val" if rank < n_val else "train"
        canvas = Image.new("L", (32, 32))
        canvas.paste(Image.fromarray(x[i]).resize((24, 24), Image.BILINEAR), (4, 4))
        folder = root / split / str(d.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        canvas.save(folder / f"{i:04d}.png")
    return root


# A small user network without a preprocess(...) declaration (the research-loop and docs tests)
SMALL_NET = """param classes = 10
input 32x32x3
conv3(16) bn relu maxpool2
conv3(32) bn relu maxpool2
conv3(64) bn relu
gap
head: fc(classes)
"""


SHAPES = ("circle", "square", "triangle", "cross", "bars")
OTHER_SHAPES = ("ring", "diamond", "hbar", "vbar")


def write_shapes(root: Path, kinds=SHAPES, per_class: int = 40, seed: int = 0, size: int = 32,
                 jitter: float | None = None, val_fraction: float = 0.5) -> Path:
    """Filled shapes in random colours on noisy backgrounds. ``jitter=None``: anywhere in the
    image; a number: centred, moved by at most that many pixels."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", int(per_class * val_fraction))):
        for k in kinds:
            folder = root / split / k
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                bg = tuple(int(v) for v in rng.integers(0, 90, 3))
                fg = tuple(int(v) for v in rng.integers(150, 256, 3))
                im = Image.new("RGB", (size, size), bg)
                draw = ImageDraw.Draw(im)
                r = rng.uniform(7, 12) * size / 32
                if jitter is None:
                    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
                else:
                    cx, cy = size / 2 + rng.uniform(-jitter, jitter, 2)
                box = [cx - r, cy - r, cx + r, cy + r]
                if k == "circle":
                    draw.ellipse(box, fill=fg)
                elif k == "square":
                    draw.rectangle(box, fill=fg)
                elif k == "triangle":
                    draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
                elif k == "ring":
                    draw.ellipse(box, outline=fg, width=max(2, int(r / 3)))
                elif k == "diamond":
                    draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fg)
                elif k == "hbar":
                    draw.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=fg)
                elif k == "vbar":
                    draw.rectangle([cx - r / 3, cy - r, cx + r / 3, cy + r], fill=fg)
                elif k == "cross":
                    w = r / 3
                    draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
                    draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
                else:
                    for j in range(3):
                        y0 = cy - r + j * 2 * r / 3
                        draw.rectangle([cx - r, y0, cx + r, y0 + r / 3], fill=fg)
                a = np.asarray(im).astype(np.int16) + rng.integers(-20, 21, (size, size, 3))
                Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def write_random(root: Path, classes: int = 3, per_class: int = 8, size=(32, 32), mode="L",
                 seed: int = 0, layout: str = "flat") -> Path:
    """Small random images whose mean brightness depends on the class (learnable, quickly).
    ``layout='flat'``: root/<class>/; ``'split'``: root/train/<class>/ and root/val/<class>/."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    splits = [("", per_class)] if layout == "flat" else [("train", per_class), ("val", max(2, per_class // 2))]
    for split, n in splits:
        for c in range(classes):
            folder = root / split / f"class{c}" if split else root / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = 40 + 170 * c / max(1, classes - 1)
                a = np.clip(rng.normal(base, 30, (size[0], size[1], channels)), 0, 255).astype(np.uint8)
                Image.fromarray(a[..., 0] if channels == 1 else a).save(folder / f"{i:03d}.png")
    return root


def run_cli(args, env=None, timeout=300):
    """``python -m archc ARGS`` in a subprocess (a fresh JAX), from the repository root."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "archc", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=str(ROOT))
