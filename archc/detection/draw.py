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
    # Tags, best first: above the box (inside at the top edge when there is no room), moved down
    # past the tags already placed, so that overlapping boxes keep readable tags.
    placed = []
    for i in order[::-1]:
        x1, y1, x2, y2 = boxes[i]
        colour = _colour(int(detections["labels"][i]))
        text = f"{detections['names'][i]} {float(detections['scores'][i]):.2f}"
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l + 2 * line, b - t + line
        tx = min(x1, max(w - tw, 0))
        ty = y1 - th if y1 - th >= 0 else y1
        while any(tx < px2 and px1 < tx + tw and ty < py2 and py1 < ty + th for px1, py1, px2, py2 in placed) \
                and ty + 2 * th <= max(y2, ty + th) and ty + 2 * th <= h:
            ty += th
        placed.append((tx, ty, tx + tw, ty + th))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        draw.text((tx + line - l, ty + line // 2 - t), text, fill=_text_colour(colour), font=font)
    return im
