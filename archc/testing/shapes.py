"""A synthetic segmentation set: coloured circles, squares and triangles on noisy backgrounds.

    from archc.testing.shapes import write_shapes
    write_shapes("shapes/", train=200, val=50, size=64)

writes ``shapes/{train,val}/images/NNNN.png`` (RGB) with same-stem class masks
``shapes/{train,val}/masks/NNNN.png`` (grey PNGs: 0 background, 1 circle, 2 square, 3 triangle)
and ``shapes/classes.txt``: the layout ``archc train`` reads for segmentation
(docs/segmentation.md). Everything follows from ``seed``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("background", "circle", "square", "triangle")


def shape_example(rng: np.random.Generator, size: int = 64, max_shapes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image (size, size, 3) uint8, mask (size, size) uint8)``: 1 to ``max_shapes``
    shapes of random class, colour, position and size over a noisy background; a later shape
    covers an earlier one."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    base = rng.uniform(40, 140, 3)
    image = base + rng.normal(0, 18, (size, size, 3))
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(1, len(CLASSES)))
        r = rng.uniform(0.14, 0.26) * size
        cx, cy = rng.uniform(r, size - r, 2)
        if cls == 1:
            inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        elif cls == 2:
            inside = (np.abs(xx - cx) <= r * 0.85) & (np.abs(yy - cy) <= r * 0.85)
        else:       # an upward triangle: below the two slanted edges, above the base
            top, bottom = cy - r, cy + r * 0.8
            half = (yy - top) / (bottom - top) * r
            inside = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
        colour = rng.uniform(0, 255, 3)
        while np.abs(colour - base).sum() < 120:        # visible against the background
            colour = rng.uniform(0, 255, 3)
        image[inside] = colour + rng.normal(0, 10, (int(inside.sum()), 3))
        mask[inside] = cls
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def write_shapes(root, *, train: int = 200, val: int = 50, size: int = 64, seed: int = 0,
                 max_shapes: int = 3) -> Path:
    """Write the set under ``root`` (see the module's docstring); returns ``root``."""
    from PIL import Image
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = shape_example(rng, size, max_shapes)
            Image.fromarray(image).save(root / split / "images" / f"{i:04d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:04d}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


__all__ = ["write_shapes", "shape_example", "CLASSES"]
