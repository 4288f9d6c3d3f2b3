"""Lowering and runtime: op semantics against independent numpy implementations, and the Model
API (init, train, outputs=, save/load, jit/grad/vmap). Hand-built graphs; no front end needed."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ir_helpers import P0, GraphBuilder, resnet50_graph

from archc.compiler import ops
from archc.compiler.ir import Node
from archc.compiler.lower import variable_specs
from archc.runtime.model import Model
from archc.runtime.variables_io import load_variables, save_variables

pytestmark = pytest.mark.usefixtures("highest_precision")


def rand(*shape, seed=0, positive=False):
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape).astype(np.float32)
    return np.abs(x) + 0.5 if positive else x


def run_single(op, in_shape, x, batch=2, params=None, stats=None, **attrs):
    """Graph input -> one `op` node; returns (model output, the node's input/params)."""
    g = GraphBuilder("t", in_shape)
    g.add(op, "input", name="node", **attrs)
    model = Model(g.output())
    v = model.init(0)
    if params is not None:
        v["params"]["node"] = {k: jnp.asarray(a) for k, a in params.items()}
    if stats is not None:
        v["batch_stats"]["node"] = {k: jnp.asarray(a) for k, a in stats.items()}
    y = model.apply(v, x)
    assert y.shape == (x.shape[0],) + model.graph["node"].shape
    return np.asarray(y), v


# ---------------------------------------------------------------- numpy references
# IR op -> the test that checks its lowering against NumPy: a rule table like the passes' own
# (ops.RULE_TABLES), which tests/test_registry.py holds to every op
NUMPY_REFERENCES, _ = ops.pass_rules("numpy reference test")


def numpy_reference(*names):
    """Registers a test as the NumPy reference of ``names`` (several tests may check one op)."""
    def mark(test):
        for op in names:
            assert op in NUMPY_REFERENCES.covers(), op
            NUMPY_REFERENCES.setdefault(op, test.__name__)
        return test
    return mark


def np_conv(x, k, b, strides, padding, dilation, groups):
    x, k = x.astype(np.float64), k.astype(np.float64)
    n, h, w, c = x.shape
    kh, kw, cig, f = k.shape
    (sh, sw), (dh, dw) = strides, dilation
    xp = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    oh = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, oh, ow, f))
    fg = f // groups
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw, :]
            for gi in range(groups):
                out[..., gi * fg:(gi + 1) * fg] += patch[..., gi * cig:(gi + 1) * cig] @ k[i, j, :, gi * fg:(gi + 1) * fg]
    return out + (0 if b is None else b)


def np_conv_transpose(x, k, b, strides, padding, output_padding):
    """PyTorch ConvTranspose2d with weight w[ci, co, i, j] == k[i, j, co, ci]."""
    n, h, w, c = x.shape
    kh, kw, f, _ = k.shape
    (sh, sw) = strides
    full = np.zeros((n, (h - 1) * sh + kh + output_padding[0], (w - 1) * sw + kw + output_padding[1], f))
    for i in range(kh):
        for j in range(kw):
            full[:, i:i + sh * (h - 1) + 1:sh, j:j + sw * (w - 1) + 1:sw, :] += np.einsum(
                "nhwc,fc->nhwf", x.astype(np.float64), k[i, j].astype(np.float64))
    oh = full.shape[1] - padding[0][0] - padding[0][1]
    ow = full.shape[2] - padding[1][0] - padding[1][1]
    return full[:, padding[0][0]:padding[0][0] + oh, padding[1][0]:padding[1][0] + ow] + b


def np_pool(x, kind, kernel, strides, padding, extra, count_include_pad):
    """PyTorch's pooling loops, output by output."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = kernel, strides
    (pt, pb), (pl, pr) = padding
    oh = (h + pt + pb + extra[0][1] - kh) // sh + 1
    ow = (w + pl + pr + extra[1][1] - kw) // sw + 1
    out = np.zeros((n, oh, ow, c))
    for oi in range(oh):
        for oj in range(ow):
            hs, ws = oi * sh - pt, oj * sw - pl
            he, we = hs + kh, ws + kw
            h0, h1, w0, w1 = max(hs, 0), min(he, h), max(ws, 0), min(we, w)
            win = x[:, h0:h1, w0:w1, :].astype(np.float64)
            if kind == "max":
                out[:, oi, oj] = win.max(axis=(1, 2))
            else:
                if count_include_pad:
                    div = (min(he, h + pb) - max(hs, -pt)) * (min(we, w + pr) - max(ws, -pl))
                else:
                    div = (h1 - h0) * (w1 - w0)
                out[:, oi, oj] = win.sum(axis=(1, 2)) / div
    return out


def np_lrn(x, size, alpha, beta, k):
    x = x.astype(np.float64)
    c = x.shape[-1]
    out = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c, ch + (size - 1) // 2 + 1)
        s = (x[..., lo:hi] ** 2).sum(-1)
        out[..., ch] = x[..., ch] / (k + alpha / size * s) ** beta
    return out


def np_bilinear(x, fh, fw):
    def axis(a, f, ax):
        n = a.shape[ax]
        dst = np.arange(n * f)
        src = np.maximum((dst + 0.5) / f - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n - 1)
        lam = (src - i0).reshape([-1 if d == ax else 1 for d in range(a.ndim)])
        return np.take(a, i0, ax) * (1 - lam) + np.take(a, i1, ax) * lam
    return axis(axis(x.astype(np.float64), fh, 1), fw, 2)


def np_roi_align(rois, fmap, out, scale, sampling, aligned):
    """torchvision's roi_align CPU kernel (csrc/ops/cpu/roi_align_kernel.cpp), RoI by RoI."""
    n, h, w, c = fmap.shape
    ph_n, pw_n = out
    result = np.zeros(rois.shape[:2] + (ph_n, pw_n, c))
    off = 0.5 if aligned else 0.0

    def tap(y, x, img):
        if y < -1.0 or y > h or x < -1.0 or x > w:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        yl, xl = int(y), int(x)
        if yl >= h - 1:
            yl = yh = h - 1
            y = float(yl)
        else:
            yh = yl + 1
        if xl >= w - 1:
            xl = xh = w - 1
            x = float(xl)
        else:
            xh = xl + 1
        ly, lx = y - yl, x - xl
        return ((1 - ly) * (1 - lx) * img[yl, xl] + (1 - ly) * lx * img[yl, xh]
                + ly * (1 - lx) * img[yh, xl] + ly * lx * img[yh, xh])

    for b in range(rois.shape[0]):
        for r, (x1, y1, x2, y2) in enumerate(rois[b].astype(np.float64)):
            sw, sh, ew, eh = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
            rw, rh = ew - sw, eh - sh
            if not aligned:
                rw, rh = max(rw, 1.0), max(rh, 1.0)
            bh, bw = rh / ph_n, rw / pw_n
            gh = sampling if sampling > 0 else int(np.ceil(rh / ph_n))
            gw = sampling if sampling > 0 else int(np.ceil(rw / pw_n))
            for p in range(ph_n):
                for q in range(pw_n):
                    acc = sum(tap(sh + p * bh + (iy + .5) * bh / gh, sw + q * bw + (ix + .5) * bw / gw, fmap[b])
                              for iy in range(gh) for ix in range(gw))
                    result[b, r, p, q] = acc / max(gh * gw, 1)
    return result


def np_roi_pool(rois, fmap, out, scale):
    """torchvision's roi_pool CPU kernel: C's round (half away from zero), max per bin."""
    n, h, w, c = fmap.shape
    ph_n, pw_n = out
    result = np.zeros(rois.shape[:2] + (ph_n, pw_n, c))

    def rnd(v):
        return int(np.sign(v) * np.floor(abs(v) + 0.5))
    for b in range(rois.shape[0]):
        for r, box in enumerate(rois[b]):
            x1, y1, x2, y2 = (rnd(np.float32(v) * np.float32(scale)) for v in box)
            bh, bw = max(y2 - y1 + 1, 1) / ph_n, max(x2 - x1 + 1, 1) / pw_n
            for p in range(ph_n):
                hs = min(max(int(np.floor(p * bh)) + y1, 0), h)
                he = min(max(int(np.ceil((p + 1) * bh)) + y1, 0), h)
                for q in range(pw_n):
                    ws = min(max(int(np.floor(q * bw)) + x1, 0), w)
                    we = min(max(int(np.ceil((q + 1) * bw)) + x1, 0), w)
                    if he > hs and we > ws:
                        result[b, r, p, q] = fmap[b, hs:he, ws:we].max(axis=(0, 1))
    return result


def boundary_rois(n, r, h, w, scale, seed=0):
    """Random RoIs plus the hard cases: outside the map, smaller than a map cell, on the last
    row and column, inverted (x2 < x1)."""
    g = np.random.default_rng(seed)
    xy = g.uniform(-0.3, 1.1, (n, r, 2)) * np.array([w, h]) / scale
    wh = g.uniform(0.0, 0.7, (n, r, 2)) * np.array([w, h]) / scale
    rois = np.concatenate([xy, xy + wh], -1)
    special = np.array([[-30, -20, -5, -2],                               # wholly outside, above left
                        [3.1, 2.2, 3.4, 2.5],                             # smaller than a cell
                        [0, (h - 0.6) / scale, w / scale, h / scale],      # the last row
                        [(w - 0.2) / scale, 0, (w + 9) / scale, 7 / scale],  # past the right edge
                        [9, 9, 4, 5]])                                    # inverted
    rois[:, :len(special)] = special
    return rois.astype(np.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


# ---------------------------------------------------------------- op semantics
@pytest.mark.parametrize("kernel,strides,padding,dilation,groups,cin,cout", [
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, 3, 4),
    ((3, 3), (2, 2), ((0, 1), (0, 1)), (1, 1), 1, 3, 4),        # TF 'same', stride 2
    ((3, 2), (2, 1), ((2, 0), (1, 3)), (1, 1), 1, 3, 5),        # asymmetric everything
    ((3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2), 1, 4, 4),        # dilation
    ((3, 3), (1, 2), ((1, 1), (1, 1)), (1, 1), 2, 4, 6),        # groups
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 6, 6, 6),        # depthwise
    ((3, 3), (1, 1), ((1, 2), (0, 1)), (2, 1), 3, 6, 3),        # dilation + groups, asymmetric
    # the CPU rewrites (archc.compiler.lower._cpu_conv_path): 1x1 as a dot, unpadded kxk
    # padded-then-cropped, depthwise as shifted slices (with dilation)
    ((1, 1), (1, 1), P0, (1, 1), 1, 3, 4),
    ((1, 1), (2, 2), P0, (1, 1), 1, 3, 4),                      # ResNet's projection shortcut
    ((3, 3), (1, 1), P0, (1, 1), 1, 3, 4),                      # Inception's 'valid' 3x3
    ((3, 3), (2, 2), P0, (1, 1), 1, 3, 4),                      # on 9 rows (odd) and 8 columns
    ((3, 1), (2, 1), P0, (1, 1), 1, 3, 4),
    ((3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2), 6, 6, 6),        # dilated depthwise
])
@numpy_reference('conv')
def test_conv(kernel, strides, padding, dilation, groups, cin, cout):
    x = rand(2, 9, 8, cin)
    k = rand(kernel[0], kernel[1], cin // groups, cout, seed=1)
    b = rand(cout, seed=2)
    y, _ = run_single("conv", (9, 8, cin), x, params={"kernel": k, "bias": b}, features=cout,
                      kernel=kernel, strides=strides, padding=padding, dilation=dilation,
                      groups=groups, bias=True)
    close(y, np_conv(x, k, b, strides, padding, dilation, groups))


@pytest.mark.parametrize("attrs,path", [
    ({"kernel": (1, 1), "strides": (2, 2), "padding": P0, "features": 8}, "pointwise"),
    ({"kernel": (3, 3), "strides": (1, 1), "padding": P0, "features": 8}, "pad_crop"),
    ({"kernel": (1, 7), "strides": (1, 1), "padding": ((0, 0), (3, 3)), "features": 8}, None),
    ({"kernel": (3, 3), "strides": (1, 1), "padding": P0, "dilation": (2, 2), "features": 8}, None),
    ({"kernel": (3, 3), "strides": (1, 1), "padding": ((1, 1), (1, 1)), "groups": 4, "features": 4}, "depthwise"),
    ({"kernel": (3, 3), "strides": (1, 1), "padding": ((1, 1), (1, 1)), "groups": 2, "features": 4}, None),
])
def test_cpu_conv_path_choice(attrs, path):
    """The CPU rewrites apply exactly where they were measured to help (and test_conv above
    checks each one's values)."""
    from archc.compiler.lower import _cpu_conv_path
    from archc.compiler.ops import attrs_of
    expected = path if jax.default_backend() == "cpu" else None
    attrs = attrs_of("conv", **{"dilation": (1, 1), "groups": 1, "bias": True, **attrs})
    assert _cpu_conv_path(attrs, jnp.zeros((1, 9, 8, 4))) == expected


@pytest.mark.parametrize("kernel,strides,padding,output_padding", [
    ((4, 4), (2, 2), ((1, 1), (1, 1)), (0, 0)),                 # the DCGAN/U-Net 2x upsampler
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),                 # with output_padding
    ((3, 2), (1, 2), ((0, 2), (1, 0)), (0, 1)),
])
@numpy_reference('conv_transpose')
def test_conv_transpose(kernel, strides, padding, output_padding):
    x = rand(2, 5, 4, 3)
    k = rand(kernel[0], kernel[1], 4, 3, seed=1)
    b = rand(4, seed=2)
    y, _ = run_single("conv_transpose", (5, 4, 3), x, params={"kernel": k, "bias": b}, features=4,
                      kernel=kernel, strides=strides, padding=padding,
                      output_padding=output_padding, bias=True)
    close(y, np_conv_transpose(x, k, b, strides, padding, output_padding))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("kernel,strides,padding,extra,cip", [
    ((2, 2), (2, 2), P0, P0, True),
    ((3, 3), (2, 2), ((1, 1), (1, 1)), P0, True),               # ResNet stem / AvgPool(3,2,1)
    ((3, 3), (2, 2), ((1, 1), (1, 1)), P0, False),
    ((3, 3), (2, 2), P0, ((0, 1), (0, 1)), True),               # ceil_mode (GoogLeNet)
    ((3, 3), (2, 2), ((1, 1), (1, 1)), ((0, 1), (0, 1)), True),  # ceil_mode + padding
    ((3, 3), (2, 2), ((1, 1), (1, 1)), ((0, 1), (0, 1)), False),
    ((3, 3), (1, 1), ((1, 1), (1, 1)), P0, False),              # TF 'same' avg, stride 1
    ((3, 2), (2, 2), ((0, 1), (0, 1)), P0, False),              # TF 'same' avg, asymmetric
    ((3, 3), (2, 2), P0, P0, True),                             # unpadded: separable slices on CPU
    ((3, 2), (1, 2), P0, P0, True),
])
@numpy_reference('pool')
def test_pool(kind, kernel, strides, padding, extra, cip):
    x = rand(2, 8, 7, 3)
    y, _ = run_single("pool", (8, 7, 3), x, kind=kind, kernel=kernel, strides=strides,
                      padding=padding, extra=extra, count_include_pad=cip)
    close(y, np_pool(x, kind, kernel, strides, padding, extra, cip))


@numpy_reference('lrn')
@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (4, 0.5, 0.6, 1.0), (3, 2.0, 1.2, 0.5)])
def test_lrn(size, alpha, beta, k):
    x = rand(2, 3, 3, 7) * 3
    y, _ = run_single("lrn", (3, 3, 7), x, size=size, alpha=alpha, beta=beta, k=k)
    close(y, np_lrn(x, size, alpha, beta, k))


@numpy_reference('flatten')
def test_flatten_orders():
    x = rand(2, 3, 4, 5)
    y, _ = run_single("flatten", (3, 4, 5), x, order="nchw")
    close(y, x.transpose(0, 3, 1, 2).reshape(2, -1), 0)
    y, _ = run_single("flatten", (3, 4, 5), x, order="nhwc")
    close(y, x.reshape(2, -1), 0)


@numpy_reference('shuffle')
def test_shuffle_matches_pytorch_channel_shuffle():
    x = rand(2, 3, 3, 12)
    y, _ = run_single("shuffle", (3, 3, 12), x, groups=3)
    nchw = x.transpose(0, 3, 1, 2)
    ref = nchw.reshape(2, 3, 4, 3, 3).transpose(0, 2, 1, 3, 4).reshape(2, 12, 3, 3).transpose(0, 2, 3, 1)
    close(y, ref, 0)


@numpy_reference('act')
@pytest.mark.parametrize("fn", sorted(ops.ACTIVATIONS))
def test_activation(fn):
    """Each activation's lowering against the NumPy reference of its record (ops.ACTIVATIONS),
    at an alpha other than its default where it takes one."""
    x = rand(2, 2, 3, 8) * 4
    x[0, 0, 0, :4] = [-3.0, 3.0, 0.0, 6.5]            # the hard_* kinks
    act = ops.ACTIVATIONS[fn]
    alpha = None if act.alpha is None else act.alpha * 0.7 + 0.1
    y, _ = run_single("act", (2, 3, 8), x, fn=fn, **({} if alpha is None else {"alpha": alpha}))
    close(y, act.numpy_ref(x.astype(np.float64), alpha), 2e-6)


@numpy_reference('bn')
@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False)])
def test_batchnorm_inference(scale, center):
    x = rand(2, 3, 3, 4)
    mean, var = rand(4, seed=1), rand(4, seed=2, positive=True)
    params = {}
    if scale:
        params["scale"] = rand(4, seed=3)
    if center:
        params["bias"] = rand(4, seed=4)
    y, _ = run_single("bn", (3, 3, 4), x, params=params, stats={"mean": mean, "var": var},
                      eps=1e-3, momentum=0.9, scale=scale, center=center)
    ref = (x - mean) / np.sqrt(var.astype(np.float64) + 1e-3)
    close(y, ref * params.get("scale", 1.0) + params.get("bias", 0.0))


@numpy_reference('layernorm')
@pytest.mark.parametrize("shape", [(3, 4, 6), (6,)])
@pytest.mark.parametrize("train", [False, True])
def test_layernorm(shape, train):
    x = rand(2, *shape) * 3 + 5                      # a large mean: the two-pass variance matters
    scale, bias = rand(shape[-1], seed=1), rand(shape[-1], seed=2)
    g = GraphBuilder("t", shape)
    g.add("layernorm", "input", name="node", eps=1e-6)
    model = Model(g.output())
    v = model.init(0)
    v["params"]["node"] = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    y = model.apply(v, x, train=train)
    y = y[0] if train else y                         # no statistics to update: the same in training
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6) * scale + bias
    close(y, ref)


@numpy_reference('groupnorm')
@pytest.mark.parametrize("shape,groups,affine", [((3, 4, 6), 2, True), ((3, 4, 6), 6, False), ((2, 5, 8), 1, True),
                                                 ((6,), 3, True)])
@pytest.mark.parametrize("train", [False, True])
def test_groupnorm(shape, groups, affine, train):
    # groups = channels is instancenorm, 1 group normalises each sample over everything
    x = rand(2, *shape) * 3 + 5                      # a large mean: the two-pass variance matters
    scale, bias = rand(shape[-1], seed=1), rand(shape[-1], seed=2)
    g = GraphBuilder("t", shape)
    g.add("groupnorm", "input", name="node", groups=groups, eps=1e-5, affine=affine)
    model = Model(g.output())
    v = model.init(0)
    if affine:
        v["params"]["node"] = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
    y = model.apply(v, x, train=train)
    y = y[0] if train else y                         # no statistics to update: the same in training
    # PyTorch's definition on NCHW: (N, g, C/g * H * W) rows, each standardised
    nchw = np.moveaxis(x.astype(np.float64), -1, 1)
    rows = nchw.reshape(2, groups, -1)
    ref = ((rows - rows.mean(-1, keepdims=True)) / np.sqrt(rows.var(-1, keepdims=True) + 1e-5)).reshape(nchw.shape)
    ref = np.moveaxis(ref, 1, -1)
    close(y, ref * scale + bias if affine else ref)


@numpy_reference('layer_scale')
@pytest.mark.parametrize("train", [False, True])
def test_layer_scale(train):
    x, scale = rand(2, 3, 4, 5), rand(5, seed=1)
    g = GraphBuilder("t", (3, 4, 5))
    g.add("layer_scale", "input", name="node", init=1e-6)
    model = Model(g.output())
    v = model.init(0)
    close(v["params"]["node"]["scale"], np.full(5, 1e-6, np.float32), 0)
    v["params"]["node"] = {"scale": jnp.asarray(scale)}
    y = model.apply(v, x, train=train)
    close(y[0] if train else y, x * scale)


@numpy_reference('drop_path')
def test_drop_path():
    rate, n = 0.3, 4000
    g = GraphBuilder("t", (2, 2, 3))
    g.add("drop_path", "input", name="node", rate=rate)
    model = Model(g.output())
    v, x = model.init(0), rand(n, 2, 2, 3, positive=True)
    close(model.apply(v, x), x, 0)                                   # inference: the identity
    with pytest.raises(ValueError, match="random key"):
        model.apply(v, x, train=True)                                # training demands a key
    y, _ = model.apply(v, x, train=True, rng=jax.random.PRNGKey(0))
    y = np.asarray(y)
    kept = (y != 0).reshape(n, -1)
    assert (kept.all(1) | ~kept.any(1)).all()                        # per sample: all or nothing
    close(y[kept.all(1)], x[kept.all(1)] / (1 - rate))
    assert abs(kept.all(1).mean() - (1 - rate)) < 0.03
    # the expectation over samples is the input: E[y] = (1 - p) * x / (1 - p)
    assert abs(y.mean() / x.mean() - 1) < 0.03
    y2, _ = model.apply(v, x, train=True, rng=jax.random.PRNGKey(1))
    assert not np.array_equal(y, y2)


@numpy_reference('upsample')
@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_upsample(method):
    x = rand(2, 3, 4, 2)
    y, _ = run_single("upsample", (3, 4, 2), x, factor=(2, 3), method=method)
    ref = x.repeat(2, 1).repeat(3, 2) if method == "nearest" else np_bilinear(x, 2, 3)
    close(y, ref)


@numpy_reference('pad', 'crop', 'slice', 'scale', 'identity', 'dropout', 'global_pool', 'dense')
def test_small_ops():
    x = rand(2, 5, 6, 4)
    close(run_single("pad", (5, 6, 4), x, padding=((1, 0), (2, 3)), value=-1.5)[0],
          np.pad(x, ((0, 0), (1, 0), (2, 3), (0, 0)), constant_values=-1.5), 0)
    close(run_single("crop", (5, 6, 4), x, crop=((1, 2), (0, 3)))[0], x[:, 1:3, 0:3], 0)
    close(run_single("slice", (5, 6, 4), x, start=1, stop=3)[0], x[..., 1:3], 0)
    close(run_single("scale", (5, 6, 4), x, value=0.25)[0], x * 0.25, 0)
    close(run_single("identity", (5, 6, 4), x)[0], x, 0)
    close(run_single("dropout", (5, 6, 4), x, rate=0.5)[0], x, 0)          # inference
    close(run_single("global_pool", (5, 6, 4), x, kind="avg", keepdims=True)[0], x.mean((1, 2), keepdims=True))
    close(run_single("global_pool", (5, 6, 4), x, kind="max", keepdims=False)[0], x.max((1, 2)), 0)
    k, b = rand(4, 3, seed=1), rand(3, seed=2)
    close(run_single("dense", (5, 6, 4), x, params={"kernel": k, "bias": b}, features=3, bias=True)[0],
          x.astype(np.float64) @ k + b)


def np_adaptive(x, kind, out):
    n, h, w, c = x.shape
    res = np.zeros((n,) + tuple(out) + (c,))
    for i in range(out[0]):
        for j in range(out[1]):
            win = x[:, (i * h) // out[0]:-(-((i + 1) * h) // out[0]), (j * w) // out[1]:-(-((j + 1) * w) // out[1])]
            res[:, i, j] = win.max((1, 2)) if kind == "max" else win.astype(np.float64).mean((1, 2))
    return res


@numpy_reference('adaptive_pool')
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("out", [(2, 3), (3, 4), (5, 5), (1, 1)])
def test_adaptive_pool(kind, out):
    x = rand(2, 6, 7, 3)          # 6 -> 2, 3 divide; 7 -> 3, 4, 5 do not (overlapping windows)
    y, _ = run_single("adaptive_pool", (6, 7, 3), x, kind=kind, out=out)
    close(y, np_adaptive(x, kind, out))


@numpy_reference('reshape', 'l2norm', 'normalize', 'rescale')
def test_reshape_l2norm_normalize_rescale():
    x = rand(2, 3, 4, 6)
    close(run_single("reshape", (3, 4, 6), x, shape=(12, 6))[0], x.reshape(2, 12, 6), 0)
    close(run_single("reshape", (3, 4, 6), x, shape=(72,))[0], x.reshape(2, 72), 0)
    scale = rand(6, seed=3)
    y, v = run_single("l2norm", (3, 4, 6), x, params={"scale": scale}, init=20.0, eps=1e-12)
    close(y, x / np.sqrt((x.astype(np.float64) ** 2).sum(-1, keepdims=True)) * scale)
    y, v = run_single("l2norm", (3, 4, 6), np.zeros_like(x), init=20.0, eps=1e-12)
    close(y, np.zeros_like(x), 0)                                  # eps guards the zero vector
    mean, var = rand(6, seed=1), rand(6, seed=2, positive=True)
    var[0] = 1e-20                                                  # below eps**2
    y, v = run_single("normalize", (3, 4, 6), x, stats={"mean": mean, "var": var, "count": np.float32(5)}, eps=1e-7)
    close(y, (x - mean) / np.maximum(np.sqrt(var.astype(np.float64)), 1e-7), 1e-4)
    sc, off = tuple(rand(6, seed=4).tolist()), tuple(rand(6, seed=5).tolist())
    close(run_single("rescale", (3, 4, 6), x, scale=sc, offset=off)[0], x * np.float32(sc) + np.float32(off))
    close(run_single("rescale", (3, 4, 6), x, scale=(1 / 255,) * 6, offset=(-1.0,) * 6)[0], x / 255 - 1)


def test_new_op_variables():
    g = GraphBuilder("vars", (4, 4, 3))
    g.add("l2norm", "input", name="l2", init=10.0, eps=1e-12)
    g.add("normalize", "l2", name="norm", eps=1e-7)
    model = Model(g.output())
    v = model.init(0)
    close(v["params"]["l2"]["scale"], np.full(3, 10.0), 0)
    assert {k: a.shape for k, a in v["batch_stats"]["norm"].items()} == {"mean": (3,), "var": (3,), "count": ()}
    _, v2 = model.apply(v, rand(2, 4, 4, 3), train=True)                  # training leaves them alone
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v2)))


@numpy_reference('concat', 'add', 'mul')
def test_concat_add_mul_broadcast():
    g = GraphBuilder("t", (4, 4, 3))
    se = g.add("global_pool", "input", name="gp", kind="avg", keepdims=True)
    m = g.add("mul", ["input", se], name="mul")
    a = g.add("add", ["input", m, se], name="add")
    g.add("concat", ["input", a, m], name="cat")
    model = Model(g.output())
    x = rand(2, 4, 4, 3)
    y = model.apply(model.init(0), x, outputs=["mul", "add", "cat"])
    s = x.mean((1, 2), keepdims=True)
    close(y["mul"], x * s)
    close(y["add"], x + x * s + s)
    close(y["cat"], np.concatenate([x, x + x * s + s, x * s], -1))


# ---------------------------------------------------------------- a graph using every op
@pytest.mark.parametrize("sampling,aligned", [(2, False), (2, True), (-1, False), (1, True)])
@numpy_reference('roi_align')
def test_roi_align(sampling, aligned):
    g = roi_op_graph(sampling=sampling, aligned=aligned)
    model = Model(g.output("align", "pool"))
    f, rois = rand(2, 9, 10, 3), boundary_rois(2, 12, 9, 10, 0.5)
    v = model.init(0)
    y = model.apply(v, {"input": f, "rois": rois}, outputs=["align"])["align"]
    close(y, np_roi_align(rois, f, (3, 2), 0.5, sampling, aligned), 1e-5)


@numpy_reference('roi_pool')
def test_roi_pool():
    model = Model(roi_op_graph().output("pool"))
    f, rois = rand(2, 9, 10, 3), boundary_rois(2, 12, 9, 10, 0.5, seed=1)
    y = model.apply(model.init(0), {"input": f, "rois": rois})
    close(y, np_roi_pool(rois, f, (3, 3), 0.5), 0)


def roi_op_graph(sampling: int = 2, aligned: bool = False) -> GraphBuilder:
    """The RoI ops on a second graph input (R=12 boxes per image): roi_align on one map and on
    two (MultiScaleRoIAlign's level mapping), roi_pool, and a per-RoI head after them."""
    g = GraphBuilder("roi_ops", (9, 10, 3))
    g.graph.nodes["rois"] = Node("rois", "input", (), ops.attrs_of("input", shape=(12, 4)), (12, 4))
    g.graph.inputs.append("rois")
    half = g.pool("input", "max", 2, 2, name="half")
    g.add("roi_align", ["rois", "input"], name="align", out=(3, 2), scales=(0.5,), sampling=sampling, aligned=aligned)
    g.add("roi_align", ["rois", "input", half], name="levels", out=(2, 2), scales=(0.5, 0.25), sampling=sampling,
          aligned=aligned)
    g.add("roi_pool", ["rois", "input"], name="pool", out=(3, 3), scale=0.5)
    x = g.add("flatten", "align", name="flat", order="nchw")
    g.add("dense", x, name="fc", features=5, bias=True)
    return g


def every_op_graph(dropout: float = 0.3) -> GraphBuilder:
    g = GraphBuilder("every_op", (9, 9, 4))
    x = g.conv("input", 8, 3, 1, padding=((2, 0), (1, 3)), dilation=(2, 1), groups=2, name="conv")
    x = g.bn(x, "bn")
    x = g.act(x, "leaky_relu", name="act", alpha=0.1)
    x = g.pool(x, "max", 3, 2, extra=((0, 1), (0, 1)), name="pool")
    x = g.add("conv_transpose", x, name="deconv", features=6, kernel=(4, 4), strides=(2, 2),
              padding=((1, 1), (1, 1)), output_padding=(0, 0), bias=True)
    x = g.add("lrn", x, name="lrn", size=3, alpha=1e-3, beta=0.75, k=1.0)
    x = g.add("shuffle", x, name="shuffle", groups=3)
    s1 = g.add("slice", x, name="slice", start=0, stop=4)
    s1 = g.add("pad", s1, name="pad", padding=((1, 1), (1, 1)), value=0.0)
    s1 = g.add("crop", s1, name="crop", crop=((1, 1), (1, 1)))
    s2 = g.pool(x, "avg", 2, 2, count_include_pad=False, name="avg")
    s2 = g.add("upsample", s2, name="up", factor=(2, 2), method="bilinear")
    x = g.add("concat", [s1, s2], name="cat")
    x = g.add("add", [x, g.conv(x, 10, 1, name="proj")], name="res")
    se = g.add("global_pool", x, name="se_pool", kind="avg", keepdims=True)
    se = g.act(g.conv(se, 10, 1, name="se_fc"), "sigmoid", name="se_gate")
    x = g.add("mul", [x, se], name="se")
    x = g.add("bn", x, name="bn_noscale", eps=1e-5, momentum=0.99, scale=False, center=True)
    x = g.add("layernorm", x, name="layernorm", eps=1e-6)
    x = g.add("groupnorm", x, name="groupnorm", groups=5, eps=1e-5, affine=True)
    x = g.add("layer_scale", x, name="layer_scale", init=0.5)
    x = g.add("drop_path", x, name="drop_path", rate=dropout)
    x = g.add("dropout", x, name="drop", rate=dropout)
    x = g.add("scale", x, name="scale", value=0.5)
    x = g.add("identity", x, name="id")
    x = g.add("l2norm", x, name="l2norm", init=20.0, eps=1e-12)
    x = g.add("normalize", x, name="normalize", eps=1e-7)
    x = g.add("rescale", x, name="rescale", scale=(0.5,) * 10, offset=tuple(range(10)))
    x = g.add("adaptive_pool", x, name="adaptive", kind="avg", out=(3, 2))
    x = g.add("reshape", x, name="reshape", shape=(2, 3, 10))
    x = g.add("flatten", x, name="flat", order="nchw")
    g.add("dense", x, name="fc", features=5, bias=False)
    return g


@pytest.fixture(scope="module")
def every_op():
    return Model(every_op_graph().output())


@pytest.fixture(scope="module")
def every_op_nodrop():
    return Model(every_op_graph(dropout=0.0).output())


@pytest.fixture(scope="module")
def tiny():
    g = GraphBuilder("tiny", (6, 6, 3))
    x = g.act(g.bn(g.conv("input", 4, 3, 2, name="conv"), "bn"), name="relu")
    x = g.add("global_pool", x, name="gap", kind="avg", keepdims=False)
    g.add("dense", x, name="fc", features=2, bias=True)
    return Model(g.output())


def test_eval_shapes_match_ir(every_op):
    shapes = every_op.eval_shapes(batch=3)
    for node in every_op.graph:
        assert shapes[node.name] == (3,) + tuple(node.shape), node.name


def test_eval_shapes_match_ir_resnet50():
    model = Model(resnet50_graph(classes=10))
    shapes = model.eval_shapes(batch=2)
    assert {n: s[1:] for n, s in shapes.items()} == {n.name: tuple(n.shape) for n in model.graph}
    s = model.summary()
    assert (s["trainable_params"], s["non_trainable_params"]) == (23_528_522, 53_120)
    assert Model(resnet50_graph()).summary()["trainable_params"] == 25_557_032


def test_variables_match_linen_init(every_op):
    """Model.init's fast path creates exactly the variables Linen's own init would."""
    x = jnp.zeros((1,) + every_op.input_shape)
    ref = jax.eval_shape(lambda: every_op.module.init(jax.random.PRNGKey(0), x))
    mine = every_op.init(0)
    assert jax.tree.structure(ref) == jax.tree.structure(mine)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(mine)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert len(variable_specs(every_op.graph)) == len(jax.tree.leaves(mine))
    k = mine["params"]["proj"]["kernel"]
    assert k.shape == (1, 1, 10, 10) and 0.15 < float(jnp.std(k)) < 0.5   # lecun: 1/sqrt(10)


def test_init_deterministic(every_op):
    a, b, c = every_op.init(0), every_op.init(0), every_op.init(1)
    la, lb, lc = jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)
    assert all(np.array_equal(x, y) for x, y in zip(la, lb))
    assert not np.array_equal(a["params"]["conv"]["kernel"], c["params"]["conv"]["kernel"])
    # each kernel has its own draws; compared by sign, as the fan-in scales would make shared draws differ
    conv, proj = (np.asarray(a["params"][n]["kernel"]).ravel() for n in ("conv", "proj"))
    n = min(conv.size, proj.size)
    assert not np.array_equal(np.sign(conv[:n]), np.sign(proj[:n]))


def test_train_updates_batch_stats(every_op_nodrop):
    m = every_op_nodrop
    v = m.init(0)
    x = rand(4, 9, 9, 4)
    y, v2 = m.apply(v, x, train=True)
    assert set(v2) == set(v)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v2["params"]), jax.tree.leaves(v["params"])))
    # momentum 0.9: new = 0.9 * old + 0.1 * batch statistic (biased variance) of the bn input
    conv = np.asarray(m.apply(v, x, outputs=["conv"])["conv"], np.float64)
    close(v2["batch_stats"]["bn"]["mean"], 0.1 * conv.mean((0, 1, 2)), 1e-5)
    close(v2["batch_stats"]["bn"]["var"], 0.9 + 0.1 * conv.var((0, 1, 2)), 1e-5)
    assert not np.array_equal(v2["batch_stats"]["bn_noscale"]["mean"], v["batch_stats"]["bn_noscale"]["mean"])
    # train mode normalises with the batch statistics: bn output has ~zero mean per channel
    assert not np.allclose(y, m.apply(v, x))


def test_dropout_train():
    g = GraphBuilder("drop", (4, 4, 8))
    g.add("dropout", "input", name="drop", rate=0.25)
    model = Model(g.output())
    v, x = model.init(0), rand(4, 4, 4, 8, positive=True)
    with pytest.raises(ValueError, match="rng"):
        model.apply(v, x, train=True)
    y1, _ = model.apply(v, x, train=True, rng=jax.random.PRNGKey(1))
    y2, _ = model.apply(v, x, train=True, rng=jax.random.PRNGKey(2))
    y1, y2 = np.asarray(y1), np.asarray(y2)
    kept = y1 != 0
    close(y1[kept], x[kept] / 0.75)
    assert 0.6 < kept.mean() < 0.9 and not np.array_equal(y1, y2)
    close(model.apply(v, x), x, 0)


def test_save_load_roundtrip(every_op, tmp_path):
    v = every_op.init(3)
    v["batch_stats"]["bn"]["mean"] = jnp.asarray(rand(8, seed=9))
    path = tmp_path / "v.safetensors"
    save_variables(v, path)
    from safetensors.numpy import load_file
    assert "params/conv/kernel" in load_file(str(path))
    w = load_variables(path)
    assert jax.tree.structure(w) == jax.tree.structure(v)
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(w)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype) and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert w["batch_stats"]["normalize"]["count"].shape == ()
    close(every_op.apply(w, rand(2, 9, 9, 4)), every_op.apply(v, rand(2, 9, 9, 4)), 0)


def test_outputs_intermediates(every_op):
    v = every_op.init(0)
    x = rand(2, 9, 9, 4)
    feats = every_op.apply(v, x, outputs=["conv", "pool", "fc"])
    assert set(feats) == {"conv", "pool", "fc"}
    k, b = (np.asarray(v["params"]["conv"][n]) for n in ("kernel", "bias"))
    close(feats["conv"], np_conv(x, k, b, (1, 1), ((2, 0), (1, 3)), (2, 1), 2))
    close(feats["fc"], every_op.apply(v, x))
    with pytest.raises(ValueError, match="'pool'"):
        every_op.apply(v, x, outputs=["poool"])
    # the input itself is a node too
    close(every_op.apply(v, x, outputs=("input",))["input"], x, 0)


def test_outputs_block_names():
    g = GraphBuilder("blocks", (4, 4, 2))
    a = g.conv("input", 2, 1, name="blk.0.conv")
    side = g.act(a, "relu", name="blk.0.side")                  # used only inside blk
    b = g.add("add", [a, side], name="blk.0.add")
    g.add("scale", b, name="blk.1.scale", value=2.0)            # blk's output
    g.add("scale", "blk.1.scale", name="head", value=3.0)
    model = Model(g.output())
    assert model.program.resolve("blk") == "blk.1.scale" and model.program.resolve("blk.0") == "blk.0.add"
    v, x = model.init(0), rand(2, 4, 4, 2)
    out = model.apply(v, x, outputs=["blk", "blk.0"])
    close(out["blk"] * 3, model.apply(v, x), 1e-6)
    close(out["blk.0"] * 2, out["blk"], 1e-6)
    with pytest.raises(ValueError, match="'blk'"):
        model.apply(v, x, outputs=["bl"])


def test_grad_through_every_op(every_op_nodrop):
    m = every_op_nodrop
    v = m.init(0)
    x = rand(3, 9, 9, 4)

    def loss(params):
        return jnp.sum(m.apply_fn({**v, "params": params}, x) ** 2)

    g = jax.jit(jax.grad(loss))(v["params"])
    assert jax.tree.structure(g) == jax.tree.structure(v["params"])
    assert all(bool(jnp.all(jnp.isfinite(a))) and float(jnp.abs(a).sum()) > 0 for a in jax.tree.leaves(g))

def test_jit_grad_vmap(tiny):
    v = tiny.init(0)
    x = rand(3, 6, 6, 3)
    ref = tiny.apply(v, x)
    close(jax.jit(tiny.apply_fn)(v, x), ref, 1e-5)
    close(jax.jit(lambda v, x: tiny.apply(v, x))(v, x), ref, 1e-5)       # jit inside jit

    def loss(params, batch_stats, x):                                  # a training step's grad
        y, new = tiny.apply_fn({"params": params, "batch_stats": batch_stats}, x, train=True)
        return jnp.sum(y ** 2), new["batch_stats"]

    grads, stats = jax.jit(jax.grad(loss, has_aux=True))(v["params"], v["batch_stats"], x)
    assert jax.tree.structure(grads) == jax.tree.structure(v["params"])
    assert float(jnp.abs(grads["conv"]["kernel"]).sum()) > 0
    assert not np.array_equal(stats["bn"]["mean"], v["batch_stats"]["bn"]["mean"])
    # vmap over a stack of batches (through the jitted apply), and per example (unbatched)
    xs = rand(2, 3, 6, 6, 3)
    close(jax.vmap(lambda x: tiny.apply(v, x))(xs), np.stack([tiny.apply(v, xs[0]), tiny.apply(v, xs[1])]), 1e-5)
    close(jax.vmap(tiny.apply_fn, in_axes=(None, 0))(v, x), ref, 1e-5)
    # vmap over variables: an ensemble of two initialisations
    vs = jax.tree.map(lambda a, b: jnp.stack([a, b]), v, tiny.init(1))
    close(jax.vmap(tiny.apply_fn, in_axes=(0, None))(vs, x)[1], tiny.apply(tiny.init(1), x), 1e-5)


def test_archc_load_builtin():
    """The front end's ResNet-18, through archc.load: names, shapes, feature extraction."""
    import archc
    from archc.compiler.build import build_graph
    model = archc.load("resnet18", classes=10)
    assert model.output_shape == (10,)
    shapes = model.eval_shapes(batch=1)
    assert all(shapes[n.name] == (1,) + tuple(n.shape) for n in model.graph)
    assert model.summary()["trainable_params"] == 11_181_642
    assert isinstance(build_graph("resnet18"), type(model.graph))
    # block names stand for the block's output
    v = jax.eval_shape(model.init)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    feats = jax.eval_shape(lambda v, x: model.apply_fn(v, x, outputs=["layer3", "layer4"]), v, x)
    assert {k: a.shape for k, a in feats.items()} == {"layer3": (2, 14, 14, 256), "layer4": (2, 7, 7, 512)}


def test_load_unknown_input_shape_error(every_op):
    with pytest.raises(ValueError, match=r"every_op was built for float32 inputs of shape \(batch, 9, 9, 4\) "
                                         r"\(NHWC\); got an array of shape \(2, 9, 9, 3\)"):
        every_op.apply(every_op.init(0), rand(2, 9, 9, 3))


def test_linen_module_is_the_same_function(every_op_nodrop):
    """model.module (the Linen wrapper) computes what model.apply computes, in both modes,
    and its own init makes the same variable tree."""
    m = every_op_nodrop
    v, x = m.init(0), rand(3, 9, 9, 4)
    assert jax.tree.structure(m.module.init(jax.random.PRNGKey(0), x)) == jax.tree.structure(v)
    close(m.module.apply(v, x), m.apply(v, x), 1e-6)
    y, updates = m.module.apply(v, x, train=True, mutable=["batch_stats"])
    y2, v2 = m.apply(v, x, train=True)
    close(y, y2, 1e-6)
    for a, b in zip(jax.tree.leaves(updates["batch_stats"]), jax.tree.leaves(v2["batch_stats"])):
        close(a, b, 1e-6)


@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False)])
def test_bn_matches_flax_batchnorm(scale, center):
    """archc's BN is Flax's nn.BatchNorm op for op: outputs and running statistics."""
    import flax.linen as nn
    g = GraphBuilder("bn", (5, 5, 6))
    g.add("bn", "input", name="bn", momentum=0.8, eps=1e-3, scale=scale, center=center)
    model = Model(g.output())
    v = model.init(0)
    if scale:
        v["params"]["bn"]["scale"] = jnp.asarray(rand(6, seed=1, positive=True))
    if center:
        v["params"]["bn"]["bias"] = jnp.asarray(rand(6, seed=2))
    v["batch_stats"]["bn"] = {"mean": jnp.asarray(rand(6, seed=3)), "var": jnp.asarray(rand(6, seed=4, positive=True))}
    x = rand(4, 5, 5, 6, seed=5) * 3 + 1
    ref = nn.BatchNorm(momentum=0.8, epsilon=1e-3, use_scale=scale, use_bias=center, use_fast_variance=False)
    fv = {"params": v["params"]["bn"], "batch_stats": v["batch_stats"]["bn"]} if v["params"] else \
         {"batch_stats": v["batch_stats"]["bn"]}
    close(model.apply(v, x), ref.apply(fv, x, use_running_average=True), 1e-6)
    y, new = model.apply(v, x, train=True)
    y_ref, new_ref = ref.apply(fv, x, use_running_average=False, mutable=["batch_stats"])
    close(y, y_ref, 1e-6)
    for k in ("mean", "var"):
        close(new["batch_stats"]["bn"][k], new_ref["batch_stats"][k], 1e-6)


# ---------------------------------------------------------------- mixed precision
def _conv_bn_dense():
    g = GraphBuilder("mp", (9, 9, 4))
    x = g.conv("input", 8, 3, bias=True, name="conv")
    x = g.act(g.bn(x, name="bn"), "relu", name="relu")
    x = g.add("global_pool", x, name="gap", kind="avg", keepdims=False)
    g.add("dense", x, name="fc", features=5, bias=True)
    return Model(g.output())


def test_bf16_policy_is_flax_mixed_precision():
    """dtype='bfloat16' computes what Flax's modules do with dtype=bfloat16 and float32
    params: convs and dense layers in bf16, BN statistics in float32; the output is float32."""
    import flax.linen as nn

    class Ref(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            bf = jnp.bfloat16
            x = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), dtype=bf, name="conv")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             use_fast_variance=False, dtype=bf, name="bn")(x)
            x = nn.relu(x).mean((1, 2))
            return nn.Dense(5, dtype=bf, name="fc")(x)

    model = _conv_bn_dense()
    v = model.init(3)
    v["batch_stats"]["bn"] = {"mean": jnp.asarray(rand(8, seed=1) * 0.1),
                              "var": jnp.asarray(rand(8, seed=2, positive=True))}
    x = rand(4, 9, 9, 4, seed=4)
    y = model.apply(v, x, dtype="bfloat16")
    assert y.dtype == jnp.float32
    ref = Ref().apply(v, x, train=False).astype(jnp.float32)
    f32 = model.apply(v, x)
    scale = float(jnp.abs(f32).max())
    # the same bf16 arithmetic as Flax (identical on this CPU), visibly not float32's
    assert float(jnp.abs(y - ref).max()) < 2e-4 * scale
    assert float(jnp.abs(y - f32).max()) > 1e-3 * scale
    # training mode: float32 statistics close to Flax's, float32 gradients
    yt, new = model.apply(v, x, train=True, dtype="bfloat16")
    yt_ref, new_ref = Ref().apply(v, x, train=True, mutable=["batch_stats"])
    assert float(jnp.abs(yt - yt_ref.astype(jnp.float32)).max()) < 2e-4 * float(jnp.abs(yt).max())
    for k in ("mean", "var"):
        got, want = new["batch_stats"]["bn"][k], new_ref["batch_stats"]["bn"][k]
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: model.apply_fn({**v, "params": p}, x, train=True,
                                              dtype="bfloat16")[0].sum())(v["params"])
    assert {a.dtype for a in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


def test_bf16_policy_through_the_linen_module():
    model = _conv_bn_dense()
    v, x = model.init(0), rand(2, 9, 9, 4)
    module = model.module.clone(dtype="bfloat16")
    np.testing.assert_array_equal(module.apply(v, x), model.apply(v, x, dtype="bfloat16"))


def test_bf16_policy_runs_convs_and_dots_in_bf16():
    """The policy reaches XLA: the conv and the dense are bf16 operations; float32 has none."""
    model = _conv_bn_dense()
    v, x = model.init(0), rand(2, 9, 9, 4)
    hlo = jax.jit(lambda v, x: model.apply_fn(v, x, dtype="bfloat16")).lower(v, x).as_text()
    conv = [line for line in hlo.splitlines() if "convolution" in line]
    dots = [line for line in hlo.splitlines() if "dot_general" in line or " dot(" in line]
    assert conv and all("bf16" in line for line in conv), conv
    assert dots and all("bf16" in line for line in dots), dots
    hlo32 = jax.jit(lambda v, x: model.apply_fn(v, x)).lower(v, x).as_text()
    assert "bf16" not in hlo32


def test_unknown_compute_dtype_is_a_readable_error():
    model = _conv_bn_dense()
    with pytest.raises(ValueError, match="unknown compute dtype 'int8'.*bfloat16"):
        model.apply(model.init(0), rand(1, 9, 9, 4), dtype="int8")


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_pointwise_conv_gradients(strides, dtype, monkeypatch):
    """A 1x1 conv runs on CPU as a product with its own VJP (the weight gradient from the input
    kept transposed). Through BN, as in a training step, its gradients equal autodiff of the
    same lowering without that VJP (float32 1e-5; bf16 within a rounding), and in float32 also
    autodiff of lax.conv_general_dilated on the same variables."""
    from jax import lax
    from archc.compiler import lower
    g = GraphBuilder("pw", (6, 6, 5))
    g.act(g.bn(g.conv("input", 7, 1, strides, name="conv"), "bn"), name="relu")
    model = Model(g.output())
    v = model.init(0)
    x = rand(3, 6, 6, 5)

    def loss(params, x):
        y, _ = model.apply_fn({**v, "params": params}, x, train=True, dtype=dtype)
        return jnp.sum(jnp.sin(y))

    def reference(params, x):               # the same network, the conv written as a conv
        p, s = params["conv"], params["bn"]
        y = lax.conv_general_dilated(x, p["kernel"], (strides, strides), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]
        mean, var = jnp.mean(y, (0, 1, 2)), jnp.var(y, (0, 1, 2))
        y = (y - mean) / jnp.sqrt(var + 1e-5) * s["scale"] + s["bias"]
        return jnp.sum(jnp.sin(jnp.maximum(y, 0)))

    def grads(fn):
        return jax.jit(jax.grad(fn, argnums=(0, 1)))(v["params"], x)

    def same(a, b, tol):
        for ga, gb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert ga.dtype == gb.dtype == jnp.float32
            close(ga, gb, tol)

    ours = grads(loss)
    monkeypatch.setattr(lower, "_pointwise", lower._pointwise.fun)     # plain autodiff
    same(ours, grads(loss), 1e-5 if dtype is None else 2e-2)
    if dtype is None:
        same(ours, grads(reference), 1e-4)
