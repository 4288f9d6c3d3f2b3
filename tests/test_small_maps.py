"""Convolutions over maps smaller than their window (compiler/ops/conv.py cpu_conv_path's
'im2col' and 'im2col_grad'): XLA swaps such a convolution's operands and XLA:CPU runs the
swapped form through a slow generic loop, so archc lowers them as a product of patches. The
routed lowering must equal lax's convolution -- values and both gradients -- and leave XLA
nothing to swap."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from archc.compiler import lower
from archc.compiler.ops.conv import ConvAttrs, cpu_conv_path

pytestmark = pytest.mark.usefixtures("highest_precision")

ROUTED = ("im2col", "im2col_grad")


def geometries():
    """Kernel, stride, padding, dilation over maps 1-7: square and rectangular kernels,
    PyTorch's symmetric padding, none, TensorFlow's asymmetric 'same', and more than k//2."""
    for (kh, kw), s, d, n in itertools.product([(1, 1), (2, 2), (3, 3), (5, 5), (7, 7), (1, 3), (3, 5)],
                                               [(1, 1), (2, 2), (1, 2)], [(1, 1), (2, 2)], range(1, 8)):
        eh, ew = d[0] * (kh - 1), d[1] * (kw - 1)
        pads = {"symmetric": ((eh // 2,) * 2, (ew // 2,) * 2), "none": ((0, 0), (0, 0)),
                "same": ((eh // 2, eh - eh // 2), (ew // 2, ew - ew // 2)),
                "wide": ((eh // 2 + 1,) * 2, (ew // 2 + 1,) * 2)}
        for kind, pad in pads.items():
            if n + sum(pad[0]) > eh and n + sum(pad[1]) > ew:
                yield (kh, kw), s, kind, pad, d, (n, n + 1 if kw != kh else n)


def routed_cases():
    """One case for each combination of kernel, stride, padding kind, dilation and path that
    the rule routes, at its largest routed map (the most taps); and a 1x1 map (one useful tap)."""
    cases = {}
    for k, s, kind, pad, d, hw in geometries():
        a = ConvAttrs(5, k, s, pad, d, 1, False)
        path = cpu_conv_path(a, (2,) + hw + (3,))
        if path in ROUTED:
            cases[(k, s, kind, d, path)] = (a, hw, path)      # the largest map wins
    one = [(ConvAttrs(5, (k, k), (s, s), ((k // 2,) * 2,) * 2, (1, 1), 1, False), (1, 1), "im2col") for k, s in ((3, 1), (7, 2))]
    return list(cases.values()) + one


CASES = routed_cases()


def _conv(a):
    node, run = SimpleNamespace(attrs=a), SimpleNamespace(dtype=None)
    return lambda x, w: lower._conv(node, [x], {"kernel": w}, run)


def _reference(a):
    return lambda x, w: lax.conv_general_dilated(x, w, a.strides, a.padding, rhs_dilation=a.dilation,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_the_rule_routes_small_maps_and_leaves_the_rest():
    paths = {p for _, _, p in CASES}
    assert paths == set(ROUTED), paths
    resnet_2x2 = ConvAttrs(512, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, False)
    assert cpu_conv_path(resnet_2x2, (32, 2, 2, 512)) == "im2col"
    assert cpu_conv_path(resnet_2x2, (32, 4, 4, 512)) is None
    down = ConvAttrs(512, (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1, False)   # 4x4 -> 2x2
    assert cpu_conv_path(down, (32, 4, 4, 256)) == "im2col_grad"
    assert cpu_conv_path(down, (32, 8, 8, 256)) is None
    grouped = ConvAttrs(8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 2, False)   # XLA swaps no grouped conv
    assert cpu_conv_path(grouped, (1, 2, 2, 8)) is None


def _lean(cases):
    """The default tier's cases: 3x3 (ResNet's last stage) at each stride and 7x7 dilated, each
    path (the slow tier runs every routed combination: each case is a compile of its own)."""
    seen = {}
    for i, (a, hw, path) in enumerate(cases):
        if a.kernel == (3, 3) and a.dilation == (1, 1) or a.kernel == (7, 7) and a.dilation == (2, 2):
            seen.setdefault((a.kernel, a.strides if a.kernel == (3, 3) else None, path), i)
    return sorted(seen.values())


LEAN = _lean(CASES)


def _check(indices):
    """Output, input gradient and kernel gradient of the routed lowering against lax.conv,
    each case one compiled program (one program for many compiles slower than many small)."""
    rng = np.random.default_rng(0)
    for i in indices:
        a, hw, path = CASES[i]
        x = jnp.asarray(rng.standard_normal((2,) + hw + (3,)), jnp.float32)
        w = jnp.asarray(rng.standard_normal(tuple(a.kernel) + (3, 5)), jnp.float32)
        ct = jnp.asarray(rng.standard_normal(jax.eval_shape(_reference(a), x, w).shape), jnp.float32)

        @jax.jit
        def run(x, w, ct):
            out = []
            for f in (_conv(a), _reference(a)):
                y, pullback = jax.vjp(f, x, w)
                out.append((y,) + pullback(ct))
            return out
        mine, ref = run(x, w, ct)
        what = f"{path} kernel {a.kernel} stride {a.strides} padding {a.padding} dilation {a.dilation} map {hw}"
        for m, r, part in zip(mine, ref, ("output", "input gradient", "kernel gradient")):
            np.testing.assert_allclose(m, r, rtol=1e-5, atol=1e-5, err_msg=f"{part}: {what}")


def test_routed_convs_equal_lax_values_and_gradients():
    """One routed case per path, stride and dilation."""
    assert {CASES[i][2] for i in LEAN} == set(ROUTED) and len(LEAN) >= 6
    _check(LEAN)


@pytest.mark.slow
def test_every_routed_combination_equals_lax():
    """The other routed combinations (every padding kind and dilation)."""
    _check(sorted(set(range(len(CASES))) - set(LEAN)))


def _swapped(fn, *args) -> list:
    """The convolutions XLA compiled with its operands swapped (they carry a reversed window)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return [line.strip() for line in text.splitlines() if " convolution(" in line and "rhs_reversal" in line]


def test_xla_swaps_what_the_rule_predicts():
    """The rule mirrors XLA's operand swap: lax's convolution of a routed geometry compiles to a
    swapped one (forward for 'im2col', the gradient for 'im2col_grad'), and archc's lowering of
    it to none. A jaxlib that changes the swap rule fails here."""
    _check_swaps([CASES[i] for i in LEAN])


@pytest.mark.slow
def test_xla_swaps_what_the_rule_predicts_everywhere():
    _check_swaps(CASES[::3])


def _check_swaps(cases):
    rng = np.random.default_rng(1)
    for a, hw, path in cases:
        x = jnp.asarray(rng.standard_normal((1,) + hw + (2,)), jnp.float32)
        w = jnp.asarray(rng.standard_normal(tuple(a.kernel) + (2, 5)), jnp.float32)
        ref, mine = _reference(a), _conv(a)
        grad = lambda f: jax.grad(lambda x, w: f(x, w).sum(), argnums=(0, 1))  # noqa: E731
        assert bool(_swapped(ref, x, w)) == (path == "im2col"), (a, hw)
        # what would run instead: an unpadded kxk goes to pad_crop (one more row and column)
        unpadded = a.dilation == (1, 1) and not any(p for side in a.padding for p in side)
        instead = (lambda x, w: lower._cpu_conv("pad_crop", a, x, w)) if unpadded else ref
        assert _swapped(grad(instead), x, w), (a, hw)
        assert not _swapped(mine, x, w) and not _swapped(grad(mine), x, w), (a, hw)
