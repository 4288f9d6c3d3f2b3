"""Where a per-pixel network's output lies in its input, and overlap-tile inference (Ronneberger,
Fischer, Brox 2015, Fig. 2) for networks whose unpadded convolutions make the output smaller.

A network of this kind maps an input of extent n to an output of n - 2·margin, output pixel j
lying over input pixel j + margin (the paper's U-Net: 572 -> 388, margin 92). The geometry is
not written down anywhere: :func:`geometry` derives it from the network's own size analysis
(compiler/sizes.py, ``archc check --sizes``), as do the sizes the network accepts.

Overlap-tile: the image is mirrored at its borders by the margin; input tiles are cut so that
their outputs tile the image (the last row and column of tiles moved back to end at the image's
edge, so that their context is the image wherever it exists); each tile is run and its output
written into its place. A network whose output is as large as its input has margin 0: it is
run once on the whole image, mirrored up to the nearest size it accepts, and its output cropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..compiler import sizes

SEARCH = 512          # sizes tried above a wanted extent before giving up on running there


class GeometryError(ValueError):
    """A network whose output is not per-pixel scores over its input, or a tile it does not accept."""


@dataclass(frozen=True)
class Geometry:
    """A per-pixel network's geometry along (height, width): ``margin`` the input pixels lost on
    each side, ``tile`` an input size it accepts (its declared one unless chosen)."""

    margin: tuple
    tile: tuple
    plans: tuple = field(repr=False, compare=False)
    _accepted: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def out(self) -> tuple:
        """The output of one tile."""
        return tuple(t - 2 * m for t, m in zip(self.tile, self.margin))

    def accepts(self, axis: int, n: int) -> bool:
        """Whether the network runs on extent ``n`` of ``axis`` with its output n - 2·margin in
        place: every layer takes it, and, where the output is smaller than the input, every
        centre crop and pool is exact there (an output at the input's size is in place anyway:
        torchvision's segmenters resize theirs to the input)."""
        key = (axis, n)
        if key not in self._accepted:
            self._accepted[key] = _centred(self.plans[axis], n, self.margin[axis])
        return self._accepted[key]

    def fitting(self, axis: int, n: int) -> int | None:
        """The smallest extent >= ``n`` the network accepts on ``axis`` (None within SEARCH)."""
        return next((k for k in range(max(n, 1), max(n, 1) + SEARCH) if self.accepts(axis, k)), None)


def geometry(model, tile: tuple | None = None) -> Geometry:
    """The geometry of ``model``'s primary output over its input, derived by following the
    tile size (default: the declared input) through the network's layers; ``tile`` (H, W)
    chooses another input size for tiles. Raises GeometryError where the output is not one
    score vector per input pixel (a classifier, a map at a coarser scale) or ``tile`` is refused."""
    graph = model.graph
    name = graph.name
    if len(graph.input_shape) != 3 or len(graph.inputs) != 1:
        raise GeometryError(f"{name}: segmentation needs a network with one image input")
    out_shape = tuple(graph.output_shape)
    if len(out_shape) == 1:
        raise GeometryError(f"{name} is a classifier (its output is a vector of {out_shape[0]} class scores, "
                            f"not class scores per pixel): use archc predict")
    if len(out_shape) != 3:
        raise GeometryError(f"{name}: its output, of shape {'x'.join(map(str, out_shape))}, is not class "
                            f"scores per pixel")
    declared = tuple(int(d) for d in graph.input_shape[:2])
    tile = declared if tile is None else tuple(int(t) for t in tile)
    plans, margins = [], []
    for axis, what in enumerate(("height", "width")):
        try:
            p = sizes.plan(graph, axis)
        except sizes.CannotDerive as e:
            raise GeometryError(f"{name}: cannot derive where its output lies in its input ({e})") from None
        f = sizes.follow(p, tile[axis])
        if not _centred(p, tile[axis]):
            near = sizes.nearest(lambda k: _centred(p, k), tile[axis], 4 * max(64, tile[axis]))
            raise GeometryError(f"{name}: a tile {what} of {tile[axis]} does not give an output centred in it"
                                + (f"; it does at {', '.join(map(str, near))}" if near else ""))
        margin = (tile[axis] - f.out) // 2
        if margin and not _unit_scale(p, tile[axis], f.out):
            raise GeometryError(f"{name}: its output ({out_shape[0]}x{out_shape[1]} for an input of "
                                f"{declared[0]}x{declared[1]}) is at another scale than its input, not one "
                                f"score vector per input pixel")
        plans.append(p)
        margins.append(margin)
    return Geometry(tuple(margins), tile, tuple(plans))


def _centred(p, n: int, margin: int | None = None) -> bool:
    """Whether extent ``n`` gives an output centred in it (of n - 2·``margin``, when given): one
    at the input's size, or a smaller one where every crop and pool is exact."""
    f = sizes.follow(p, n)
    if not (f.valid and f.out is not None and f.out >= 1) or (margin is not None and f.out != n - 2 * margin):
        return False
    return f.out == n or bool(f.exact and (n - f.out) % 2 == 0)


def _unit_scale(p, n: int, out: int) -> bool:
    """Whether one more input pixel is one more output pixel (checked at the next size the
    network accepts; a network that accepts one size only is taken at its word)."""
    for k in range(n + 1, n + SEARCH):
        f = sizes.follow(p, k)
        if f.valid and f.exact:
            return f.out - out == k - n
    return True


def origins(extent: int, out: int) -> list:
    """Where output tiles of ``out`` start along an axis of ``extent`` pixels: every ``out``
    pixels, the last one moved back to end at the edge (one tile at 0 when the image is smaller)."""
    if extent <= out:
        return [0]
    return list(range(0, extent - out, out)) + [extent - out]


def mirror(x: np.ndarray, before: tuple, after: tuple) -> np.ndarray:
    """``x`` (H, W, C) mirrored at its borders (the edge pixel not repeated), ``before``/``after``
    pixels per spatial axis; wider than the image, the mirroring repeats."""
    return np.pad(x, ((before[0], after[0]), (before[1], after[1]), (0, 0)), mode="reflect")


def tiles(x: np.ndarray, geom: Geometry) -> tuple[list, list]:
    """``x`` (H, W, C) cut into overlap tiles: (input tiles, their output origins (y, x))."""
    h, w = x.shape[:2]
    (mh, mw), (oh, ow), (th, tw) = geom.margin, geom.out, geom.tile
    padded = mirror(x, (mh, mw), (mh + max(0, oh - h), mw + max(0, ow - w)))
    spots = [(y, x0) for y in origins(h, oh) for x0 in origins(w, ow)]
    return [padded[y:y + th, x0:x0 + tw] for y, x0 in spots], spots


def stitch(outputs, spots: list, size: tuple, geom: Geometry) -> np.ndarray:
    """The tiles' outputs (N, oh, ow, K) written at their origins: (H, W, K) for ``size`` (H, W)."""
    (oh, ow), (h, w) = geom.out, size
    first = np.asarray(outputs[0])
    canvas = np.zeros((max(h, oh), max(w, ow), first.shape[-1]), first.dtype)
    for y, (oy, ox) in zip(outputs, spots):
        canvas[oy:oy + oh, ox:ox + ow] = np.asarray(y)
    return canvas[:h, :w]


def whole(x: np.ndarray, geom: Geometry) -> tuple[np.ndarray, tuple] | None:
    """``x`` (H, W, C) mirrored by the margin, and further at its bottom and right edges up to
    the nearest size the network accepts: (the input, the output's extent to keep (H, W)); None
    where it accepts no size near enough."""
    h, w = x.shape[:2]
    (mh, mw) = geom.margin
    fit = [geom.fitting(0, h + 2 * mh), geom.fitting(1, w + 2 * mw)]
    if None in fit:
        return None
    return mirror(x, (mh, mw), (fit[0] - h - mh, fit[1] - w - mw)), (h, w)


__all__ = ["Geometry", "GeometryError", "geometry", "origins", "mirror", "tiles", "stitch", "whole"]
