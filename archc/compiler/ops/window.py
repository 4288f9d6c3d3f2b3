"""The spatial description of an op whose output extents follow from its input's: per axis, a
``Window`` (conv, pools: its window, stride and padding, and how that padding re-resolves at
another input size) or an ``Affine`` map (pad, crop, upsample, a transposed conv).

Such an op states ``OpDef.geometry(attrs) -> (height's, width's)``. Its shape rule reads the
description at the declared size (``window_shape``, ``Affine.out``), and compiler/sizes.py's
size rule reads the same description at every other size (``apply``, ``period``): the
arithmetic is written once, here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import ShapeError, fmt


def conv_out(size: int, k: int, s: int, pad: tuple, d: int = 1) -> int:
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def same_padding(n: int, eff: int, s: int) -> tuple:
    """TensorFlow's 'same' padding of one axis of size n for a window of extent eff and stride s:
    the output is ceil(n / s), the odd pixel at the bottom/right. Depends on n, which is why a
    'same' op keeps its padding rule (``padding_rule``) next to the padding it resolved to."""
    total = max((-(-n // s) - 1) * s + eff - n, 0)
    return (total // 2, total - total // 2)


def ceil_extra(n, k, s, pad):
    """Extra bottom/right padding that turns floor into PyTorch's ceil_mode output size."""
    total = n + pad[0] + pad[1]
    out = -(-(total - k) // s) + 1
    if (out - 1) * s >= n + pad[0]:  # the last window must start inside the input or left padding
        out -= 1
    return max(0, (out - 1) * s + k - total)


def window_check(op, s, kernel, padding, dilation=(1, 1)):
    for axis, (n, k, p, d) in enumerate(zip(s[:2], kernel, padding, dilation)):
        eff = d * (k - 1) + 1
        if eff > n + p[0] + p[1]:
            raise ShapeError(f"{op} kernel {fmt(kernel)} is larger than its padded input "
                             f"{fmt(s)} ({'height' if axis == 0 else 'width'} {n} + padding {p[0]}+{p[1]})",
                             "use a smaller kernel, add padding, or remove a downsampling step before it")


@dataclass(frozen=True)
class Window:
    """One spatial axis of a windowed op."""
    kernel: int
    stride: int
    pad: tuple                # (before, after) as resolved at the declared size
    mode: str | None = None   # how the padding re-resolves at another size: None (fixed, floor),
    #                           'same' (TensorFlow's, per size), 'ceil' (PyTorch's ceil_mode)
    pool: bool = False        # pools reject padding above half the kernel (as PyTorch does)
    dilation: int = 1
    extra: tuple = (0, 0)     # ceil mode's cells after the padding, at the declared size
    stride_fit: str | None = None   # the node whose extent an inferred stride reaches (a projection)
    padded: int = 0           # of its input, cells a pad node added (set by compiler/sizes.py:
    #                           not data, so exactness tiles the rest)

    @property
    def eff(self) -> int:
        """The window's extent (dilated)."""
        return self.dilation * (self.kernel - 1) + 1

    # ---- at the declared size (the shape rule) -------------------------------------------
    @property
    def declared_padding(self) -> tuple:
        return (self.pad[0] + self.extra[0], self.pad[1] + self.extra[1])

    # ---- at any size (compiler/sizes.py) -------------------------------------------------
    def padding(self, e):
        """(before, after) at input extent e, and the same with ceil mode's extra cells."""
        s, k = self.stride, self.eff
        pad = same_padding(e, k, s) if self.mode == "same" else self.pad
        if self.mode == "ceil":
            return pad, (pad[0], pad[1] + ceil_extra(e, k, s, pad))
        return pad, pad

    def left_out(self, e, out) -> int:
        """Input cells at the end that no window reaches (padding not counted)."""
        _, total = self.padding(e)
        return max(0, e + total[0] - ((out - 1) * self.stride + self.eff))

    def apply(self, e):
        """(output extent at input extent e, or None where the op rejects e; exact: a stride
        s > 1 maps the data to exactly e / s)."""
        s, k = self.stride, self.eff
        pad, total = self.padding(e)
        if self.pool and max(pad) * 2 > k:
            return None, False
        if k > e + total[0] + total[1]:
            return None, False
        out = conv_out(e, k, s, total)
        if out < 1:
            return None, False
        return out, s == 1 or out * s == e - self.padded

    def period(self):
        """(m, q, lo): for every e >= lo the op is valid, out(e + m) = out(e) + q and
        exactness repeats; below lo it is invalid."""
        if self.mode == "same":
            lo = 1
        elif self.mode == "ceil":
            lo = self.eff - sum(self.pad) - self.stride + 1
        else:
            lo = self.eff - sum(self.pad)
        return self.stride, 1, max(1, lo)

    def keeps_size(self) -> bool:
        """Every input extent maps to itself: stride 1 with 'same' padding, or fixed padding
        eff − 1 (not a pool's)."""
        return self.stride == 1 and (self.mode == "same" or (self.mode is None and sum(self.pad) == self.eff - 1
                                                             and not self.pool))


@dataclass(frozen=True)
class Affine:
    """out = mul·e + add on one axis (pad, crop, upsample, a transposed conv); valid while out >= 1."""
    mul: int
    add: int

    def out(self, e: int) -> int:
        return self.mul * e + self.add

    def apply(self, e):
        out = self.out(e)
        return (out, True) if out >= 1 else (None, False)

    def period(self):
        return 1, self.mul, max(1, -((self.add - 1) // self.mul))


def window_shape(op: str, s, windows) -> tuple:
    """The (H', W') of a windowed op's input s at the declared size; ShapeError where a window
    does not fit."""
    kernel = tuple(w.kernel for w in windows)
    for w in windows:
        if w.pool and max(w.pad) * 2 > w.kernel:
            raise ShapeError(f"pool padding {max(w.pad)} is more than half the kernel {fmt(kernel)}",
                             "PyTorch rejects this too; use padding <= kernel // 2")
    window_check(op, s, kernel, [w.declared_padding for w in windows], [w.dilation for w in windows])
    return tuple(conv_out(n, w.kernel, w.stride, w.declared_padding, w.dilation) for n, w in zip(s[:2], windows))
