"""Pictures of segmentation masks (Pillow): a colour per class blended over the photo, class
boundaries outlined, and a legend naming the classes present with their share of the pixels.

Colours are Pascal VOC's palette (class 0 black, 1 dark red, 2 green, … : the colours of VOC's
``SegmentationClass`` PNGs), so a VOC-trained network's picture looks as the field draws it."""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def palette() -> np.ndarray:
    """(256, 3) uint8: Pascal VOC's colour map (the bits of the class index spread over the high
    bits of R, G and B, as VOC's ``labelcolormap.m``)."""
    idx = np.arange(256)
    rgb = np.zeros((256, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            rgb[:, channel] |= ((idx >> (3 * bit + channel)) & 1) << (7 - bit)
    return rgb.astype(np.uint8)


def colour(index: int) -> tuple:
    return tuple(int(v) for v in palette()[int(index) % 256])


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                                   # Pillow < 10.1
        return ImageFont.load_default()


def present(mask: np.ndarray, names: list) -> list:
    """The classes in ``mask``: ``[{"index", "name", "fraction"}]``, the largest share first."""
    counts = np.bincount(np.asarray(mask).ravel().astype(np.int64))
    total = max(int(counts.sum()), 1)
    found = [int(c) for c in np.flatnonzero(counts)]
    found.sort(key=lambda c: (-counts[c], c))
    return [{"index": c, "name": names[c] if c < len(names) else f"class {c}", "fraction": counts[c] / total}
            for c in found]


def boundaries(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels whose right or lower neighbour has another class."""
    edge = np.zeros(mask.shape, bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    return edge


def draw_overlay(image, mask: np.ndarray, names: list, *, alpha: float = 0.5, legend: bool = True):
    """A PIL image of ``image``'s size: ``mask`` (H, W class indices at the image's size) in
    class colours blended over ``image`` (PIL or HxWx3 uint8) with weight ``alpha``, the class
    boundaries drawn in full colour, and a legend of the classes present (their colours,
    ``names``, pixel shares) in the corner where it hides the fewest boundaries."""
    from PIL import Image
    if not hasattr(image, "convert"):
        image = Image.fromarray(np.asarray(image, np.uint8))
    photo = np.asarray(image.convert("RGB"), np.float32)
    mask = np.asarray(mask)
    if mask.shape != photo.shape[:2]:
        raise ValueError(f"the mask is {mask.shape[0]}x{mask.shape[1]}, the image {photo.shape[0]}x{photo.shape[1]}")
    colours = palette()[mask.astype(np.int64) % 256].astype(np.float32)
    out = (1 - alpha) * photo + alpha * colours
    edge = boundaries(mask)
    out[edge] = colours[edge]
    im = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    if legend:
        draw_legend(im, present(mask, names), busy=edge)
    return im


def draw_legend(im, entries: list, *, limit: int = 12, busy: np.ndarray | None = None) -> None:
    """Draw a legend of ``entries`` (:func:`present`'s) on ``im`` in place: a light box with a
    swatch, the name and the share per class, in the corner where it hides the fewest ``busy``
    pixels (class boundaries; the top left when none is given or on ties); more than ``limit``
    classes: the largest, and a count of the rest."""
    from PIL import Image, ImageDraw
    if not entries:
        return
    w, h = im.size
    size = max(13, round(min(w, h) / 30))
    font = _font(size)
    shown = entries[:limit]
    texts = [f"{e['name']}  {e['fraction']:.1%}" for e in shown]
    if len(entries) > limit:
        texts.append(f"… {len(entries) - limit} more")
    draw = ImageDraw.Draw(im)
    bounds = [draw.textbbox((0, 0), t, font=font) for t in texts]
    line = max(b[3] for b in bounds) + size // 3
    pad, swatch = size // 2, size
    box_w = pad * 3 + swatch + max(b[2] for b in bounds)
    box_h = pad * 2 + line * len(texts) - size // 3
    corners = [(pad, pad), (w - pad - box_w - 1, pad), (pad, h - pad - box_h - 1), (w - pad - box_w - 1, h - pad - box_h - 1)]
    if busy is not None:
        corners.sort(key=lambda c: int(busy[max(c[1], 0):c[1] + box_h + 1, max(c[0], 0):c[0] + box_w + 1].sum()))
    left, top = corners[0]
    box = Image.new("RGBA", im.size, (0, 0, 0, 0))
    ImageDraw.Draw(box).rectangle([left, top, left + box_w, top + box_h], fill=(255, 255, 255, 215),
                                  outline=(60, 60, 60, 255))
    im.paste(Image.alpha_composite(im.convert("RGBA"), box).convert("RGB"))
    draw = ImageDraw.Draw(im)
    x0, y0 = left + pad, top + pad
    for i, text in enumerate(texts):
        y = y0 + i * line
        if i < len(shown):
            draw.rectangle([x0, y, x0 + swatch - 1, y + swatch - 1], fill=colour(shown[i]["index"]),
                           outline=(60, 60, 60))
        draw.text((x0 + swatch + pad, y + (swatch - bounds[i][3]) // 2), text, fill=(0, 0, 0), font=font)


def mask_image(mask: np.ndarray):
    """A PIL image of class indices: 8-bit grey (``L``) for up to 256 classes, 16-bit beyond, so
    that any PNG reader gets the indices back (a palette PNG would be turned into colours by
    some)."""
    from PIL import Image
    mask = np.asarray(mask)
    if int(mask.max(initial=0)) < 256:
        return Image.fromarray(mask.astype(np.uint8))
    return Image.fromarray(mask.astype(np.uint16))


__all__ = ["palette", "colour", "present", "boundaries", "draw_overlay", "draw_legend", "mask_image"]
