"""A synthetic detection data set: coloured circles, squares and triangles on a noisy
background, several per image, some images empty, written as COCO JSON (docs/detection.md).

    from archc.testing.detection_shapes import write_shapes
    train = write_shapes("shapes", "train", images=200, seed=0)     # shapes/train.json, shapes/images/
    val = write_shapes("shapes", "val", images=50, seed=1)

Each shape's box is the tight box of its drawn pixels. Shapes of one image do not overlap, so
every box is learnable. Category ids need not be contiguous (``category_ids``), to exercise the
mapping to labels 1..K and back."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle")


def _draw(draw, kind: str, x: int, y: int, s: int, colour):
    if kind == "circle":
        draw.ellipse([x, y, x + s - 1, y + s - 1], fill=colour)
    elif kind == "square":
        draw.rectangle([x, y, x + s - 1, y + s - 1], fill=colour)
    else:
        draw.polygon([(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)], fill=colour)


def shapes_image(rng: np.random.Generator, size: tuple[int, int], max_objects: int, empty: bool,
                 min_side: int, max_side: int):
    """One picture (uint8 HxWx3) and its objects [(shape index, (x1, y1, x2, y2))], boxes in
    pixels with exclusive right/bottom edges (COCO's x + w)."""
    from PIL import Image, ImageDraw
    h, w = size
    background = rng.integers(0, 90, 3)
    noise = rng.integers(-20, 21, (h, w, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    objects, taken = [], np.zeros((h, w), bool)
    for _ in range(0 if empty else int(rng.integers(1, max_objects + 1))):
        for _try in range(20):
            s = int(rng.integers(min_side, min(max_side, h, w) + 1))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            if not taken[max(y - 2, 0):y + s + 2, max(x - 2, 0):x + s + 2].any():
                break
        else:
            continue
        kind = int(rng.integers(len(SHAPES)))
        colour = tuple(int(c) for c in rng.integers(120, 256, 3))
        mask = Image.new("L", (w, h))
        _draw(ImageDraw.Draw(mask), SHAPES[kind], x, y, s, 255)
        m = np.asarray(mask) > 0
        ys, xs = np.nonzero(m)
        _draw(draw, SHAPES[kind], x, y, s, colour)
        taken |= m
        objects.append((kind, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
    return np.asarray(image), objects


def shapes_coco(root, split: str = "train", *, images: int = 100, size: tuple[int, int] = (96, 96),
                max_objects: int = 3, empty_fraction: float = 0.15, min_side: int = 16, max_side: int = 40,
                category_ids: tuple = (1, 2, 3), seed: int = 0) -> dict:
    """Draw ``images`` pictures into ``root/images/`` and return their COCO dict (file names
    relative to ``root/images``, the layout archc's COCO reader accepts)."""
    from PIL import Image
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x5A9E5])
    cats = [{"id": int(c), "name": n, "supercategory": "shape"} for c, n in zip(category_ids, SHAPES)]
    out = {"info": {"description": "archc synthetic shapes"}, "images": [], "annotations": [], "categories": cats}
    ann = 1
    for i in range(images):
        pixels, objects = shapes_image(rng, size, max_objects, rng.random() < empty_fraction, min_side, max_side)
        name = f"{split}_{i:05d}.png"
        Image.fromarray(pixels).save(root / "images" / name)
        image_id = 1 + i
        out["images"].append({"id": image_id, "file_name": name, "height": size[0], "width": size[1]})
        for kind, (x1, y1, x2, y2) in objects:
            out["annotations"].append({"id": ann, "image_id": image_id, "category_id": cats[kind]["id"],
                                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                       "iscrowd": 0})
            ann += 1
    return out


def write_shapes(root, split: str = "train", **kwargs) -> Path:
    """:func:`shapes_coco` written to ``root/<split>.json``; returns that path."""
    data = shapes_coco(root, split, **kwargs)
    path = Path(root) / f"{split}.json"
    path.write_text(json.dumps(data))
    return path


__all__ = ["write_shapes", "shapes_coco", "shapes_image", "SHAPES"]
