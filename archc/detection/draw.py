"""Drawing detections on an image (Pillow): a box per detection in a colour per class, and a
"name score" tag on a filled background above the box (inside it at the top edge)."""
from __future__ import annotations

import numpy as np


# Twelve well-separated colours (Tableau's and a few more); class k gets PALETTE[5k % 12].
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (255, 215, 0), (0, 0, 128))


def _colour(label: int) -> tuple:
    return PALETTE[label * 5 % len(PALETTE)]       # 5 is prime to 12: neighbouring classes differ


def _text_colour(rgb) -> tuple:
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 150 else (255, 255, 255)


def draw_detections(image, detections: dict, *, width: int | None = None):
    """A PIL image: ``image`` (PIL or HxWx3 uint8/float array) with ``detections`` (archc.detect's
    dict for it) drawn. Boxes are clamped to the image, so a box reaching past an edge is drawn
    along that edge."""
    from PIL import Image, ImageDraw, ImageFont
    if not hasattr(image, "convert"):
        a = np.asarray(image)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        image = Image.fromarray(a)
    im = image.convert("RGB").copy()
    w, h = im.size
    line = width or max(2, round(min(w, h) / 200))
    size = max(12, round(min(w, h) / 32))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:                                   # Pillow < 10.1
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(im)
    order = np.argsort(detections["scores"], kind="stable")     # best drawn last, on top
    boxes = {}
    for i in order:
        x1, y1, x2, y2 = (float(v) for v in detections["boxes"][i])
        x1, x2 = sorted((min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)))
        y1, y2 = sorted((min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)))
        boxes[i] = (x1, y1, x2, y2)
        draw.rectangle([x1, y1, x2, y2], outline=_colour(int(detections["labels"][i])), width=line)
    # Tags, best first, each where it overlaps no tag already placed (place_tags).
    best_first = list(order[::-1])
    texts = [f"{detections['names'][i]} {float(detections['scores'][i]):.2f}" for i in best_first]
    bounds = [draw.textbbox((0, 0), text, font=font) for text in texts]
    sizes = [(r - l + 2 * line, b - t + line) for l, t, r, b in bounds]
    for i, text, (l, t, _, _), (tx, ty, tx2, ty2) in zip(best_first, texts, bounds,
                                                        place_tags([boxes[i] for i in best_first], sizes, w, h)):
        colour = _colour(int(detections["labels"][i]))
        draw.rectangle([tx, ty, tx2 - 1, ty2 - 1], fill=colour)     # PIL includes the last pixel
        draw.text((tx + line - l, ty + line // 2 - t), text, fill=_text_colour(colour), font=font)
    return im


def place_tags(boxes: list, sizes: list, w: int, h: int) -> list:
    """Where each box's tag goes, (x0, y0, x1, y1) for boxes in the order given (best first): the
    first place overlapping no tag already placed among, nearest first, above the box, inside its
    top edge, under it, inside its bottom edge, then the image's other rows (left- or right-aligned
    with the box); where every place is taken, the least covered one."""
    placed: list = []
    for (x1, y1, x2, y2), (tw, th) in zip(boxes, sizes):
        xs = list(dict.fromkeys(min(max(x, 0), max(w - tw, 0)) for x in (x1, x2 - tw, x1 - tw, x2)))
        near = [y1 - th, y1, y2, y2 - th]
        rows = near + sorted(range(0, max(h - th, 0) + 1, max(1, th // 2)), key=lambda y: abs(y - y1))
        spots = [(x, y, x + tw, y + th) for y in rows if 0 <= y <= h - th for x in xs] or [(xs[0], 0, xs[0] + tw, th)]
        best, least = spots[0], None
        for spot in spots:
            covered = sum(_overlap(spot, p) for p in placed)
            if least is None or covered < least:
                best, least = spot, covered
            if not covered:
                break
        placed.append(best)
    return placed


def _overlap(a, b) -> float:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
