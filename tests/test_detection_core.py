"""The detection core (archc/detection: boxes, anchors, transform) against torchvision's own
functions on the same inputs. Anchors (NumPy float32, the same operations) are bit-exact, and so
are the discrete results (NMS keeps the same boxes in the same order). Box arithmetic compiled by
XLA is within a few ulp, not bit-exact: XLA's CPU backend contracts ``a * b + c`` into one fused
multiply-add, turns a division by a constant into a multiplication by its reciprocal and has its
own ``exp``, where torch rounds each operation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from archc.detection import anchors, boxes, transform
from archc.detection.declare import DetectInput


def _random_boxes(rng, n, size=300.0, min_side=1.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(min_side, size / 3, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# anchors
# ---------------------------------------------------------------------------------------------
SSD_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
SSD_SCALES = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
SSD_STEPS = [8, 16, 32, 64, 100, 300]
SSD_GRIDS = [(38, 38), (19, 19), (10, 10), (5, 5), (3, 3), (1, 1)]


def _tv_default_boxes(gen, grids, image_size):
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    il = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    return gen(il, feats)[0].numpy()


@pytest.mark.parametrize("kwargs,grids,image_size", [
    (dict(scales=SSD_SCALES, steps=SSD_STEPS), SSD_GRIDS, (300, 300)),
    (dict(scales=SSD_SCALES, steps=SSD_STEPS, clip=False), SSD_GRIDS, (300, 300)),
    (dict(), [(20, 30), (10, 15), (5, 8)], (320, 480)),                 # scales from min/max ratio, no steps
    (dict(min_ratio=0.2, max_ratio=0.95, steps=[16, 32, 64]), [(20, 30), (10, 15), (5, 8)], (333, 517)),
])
def test_ssd_default_boxes_are_bit_exact(kwargs, grids, image_size):
    ratios = SSD_RATIOS[:len(grids)]
    ours = anchors.default_boxes(grids, image_size, ratios, **kwargs)
    theirs = _tv_default_boxes(DefaultBoxGenerator(ratios, **kwargs), grids, image_size)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    if len(grids) == 6 and "steps" in kwargs:
        assert ours.shape[0] == 8732


@pytest.mark.parametrize("sizes,ratios,grids,image_size", [
    (((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5,
     [(200, 200), (100, 100), (50, 50), (25, 25), (13, 13)], (800, 800)),   # stride 61 on the last
    (((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3, [(10, 10), (10, 10), (5, 5)], (320, 320)),
    (((128, 256, 512),), ((0.5, 1.0, 2.0),), [(37, 50)], (600, 800)),        # the paper's 9 anchors
    (((17, 33.5),), ((0.3, 1.7, 2.5),), [(7, 11)], (100, 170)),              # halves and odd ratios
])
def test_grid_anchors_are_bit_exact(sizes, ratios, grids, image_size):
    ours = anchors.grid_anchors(grids, image_size, sizes, ratios)
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    il = ImageList(torch.zeros(1, 3, *image_size), [tuple(image_size)])
    theirs = AnchorGenerator(sizes, ratios)(il, feats)[0].numpy()
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)
    assert anchors.anchors_per_location(sizes, ratios) == AnchorGenerator(sizes, ratios).num_anchors_per_location()


def test_anchor_arguments_are_checked():
    with pytest.raises(ValueError, match="one entry per level"):
        anchors.default_boxes([(3, 3)], (300, 300), [[2], [2]])
    with pytest.raises(ValueError, match="need 3 scales"):
        anchors.default_boxes([(3, 3), (1, 1)], (300, 300), [[2], [2]], scales=[0.1, 0.2])


# ---------------------------------------------------------------------------------------------
# box coding, clipping, small boxes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights,k", [((10.0, 10.0, 5.0, 5.0), 1), ((1.0, 1.0, 1.0, 1.0), 1), ((10.0, 10.0, 5.0, 5.0), 3)])
def test_decode_and_encode_match_box_coder(weights, k):
    rng = np.random.default_rng(0)
    anc = _random_boxes(rng, 500)
    rel = rng.normal(0, 2, (500, 4 * k)).astype(np.float32)
    rel[:5, 2::4] = 30.0                                     # beyond the clamp
    coder = det_utils.BoxCoder(weights)
    theirs = coder.decode_single(torch.from_numpy(rel), torch.from_numpy(anc)).numpy()
    ours = np.asarray(jax.jit(lambda r, a: boxes.decode(r, a, weights))(rel, anc))
    # a corner is a difference of centre and half-size: a few ulp of the box's largest term
    ulp = np.spacing(np.abs(theirs).max(1, keepdims=True).astype(np.float32))
    err = np.abs(ours - theirs) / ulp
    assert err.max() <= 4, err.max()
    # batched (B, N, 4K) with shared anchors
    ours_b = np.asarray(boxes.decode(jnp.stack([rel, rel]), anc, weights))
    assert (np.abs(ours_b[1] - theirs) / ulp).max() <= 4
    tgt = _random_boxes(rng, 500)
    enc_t = coder.encode_single(torch.from_numpy(tgt), torch.from_numpy(anc)).numpy()
    np.testing.assert_allclose(np.asarray(boxes.encode(tgt, anc, weights)), enc_t, rtol=1e-6, atol=1e-6)


def test_clip_area_iou_remove_small():
    rng = np.random.default_rng(1)
    b = (_random_boxes(rng, 200, 400) - 50).astype(np.float32)
    b[:10, 2:] = b[:10, :2] + rng.uniform(0, 0.02, (10, 2)).astype(np.float32)   # slivers
    t = torch.from_numpy(b)
    np.testing.assert_array_equal(np.asarray(boxes.clip(b, 240, 320)),
                                  torchvision.ops.clip_boxes_to_image(t, (240, 320)).numpy())
    np.testing.assert_array_equal(np.asarray(boxes.area(b)), torchvision.ops.box_area(t).numpy())
    np.testing.assert_allclose(np.asarray(boxes.iou(b, b[:50])), torchvision.ops.box_iou(t, t[:50]).numpy(),
                               rtol=1e-6, atol=1e-7)
    valid = np.ones(200, bool)
    valid[100] = False
    keep = torchvision.ops.remove_small_boxes(t, 1e-2).numpy()
    expect = np.zeros(200, bool)
    expect[keep] = True
    expect[100] = False
    np.testing.assert_array_equal(np.asarray(boxes.remove_small(b, valid, 1e-2)), expect)


# ---------------------------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------------------------
def _clustered(rng, n, clusters=12):
    """Boxes in overlapping clusters, scores with near-ties (no exact ones)."""
    centres = rng.uniform(40, 260, (clusters, 2))
    c = centres[rng.integers(0, clusters, n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(20, 60, (n, 2))
    b = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
    s = rng.uniform(0.2, 0.8, n).astype(np.float32)
    s[1::7] = s[0::7][: len(s[1::7])] + np.float32(1e-7)
    _, first = np.unique(s, return_index=True)
    assert len(first) == n, "the test data must have no exact score ties"
    return b, s


# NMS decides by comparing IoUs with a threshold, and random boxes put some IoU within float32
# noise of it, where each library's float32 arithmetic (and each CPU's FMA) may fall either side:
# the comparisons with torchvision run both in float64, where they cannot flip.
@pytest.mark.isa
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thresh", [0.3, 0.45, 0.7])
def test_nms_matches_torchvision(seed, thresh):
    rng = np.random.default_rng(seed)
    b, s = (a.astype(np.float64) for a in _clustered(rng, 300))
    valid = rng.uniform(size=300) > 0.2
    sel = np.nonzero(valid)[0]
    theirs = sel[torchvision.ops.nms(torch.from_numpy(b[sel]), torch.from_numpy(s[sel]), thresh).numpy()]
    with jax.enable_x64(True):
        idx, count = jax.jit(boxes.nms, static_argnums=(3, 4))(b, s, valid, thresh, 320)
        idx, count = np.asarray(idx), int(count)
        assert count == len(theirs) and count < 300
        np.testing.assert_array_equal(idx[:count], theirs)
        assert (idx[count:] == 0).all()
        idx2, count2 = boxes.nms(b, s, valid, thresh, 5)       # truncated to max_out
        assert int(count2) == 5 and np.array_equal(np.asarray(idx2), theirs[:5])


@pytest.mark.isa
def test_nms_in_float32_keeps_the_float64_result_where_margins_allow():
    """The float32 path users run: on boxes whose IoUs all stand ≥ 1e-3 from the threshold
    (asserted), float32 and float64 keep the same boxes in the same order."""
    rng = np.random.default_rng(7)
    b, s = _clustered(rng, 300)
    ious = np.asarray(boxes.iou(b.astype(np.float64), b.astype(np.float64)))
    thresh = 0.5
    keep_far = np.all((np.abs(ious - thresh) >= 1e-3) | np.eye(300, dtype=bool), 1)
    b, s = b[keep_far], s[keep_far]
    assert len(b) > 100
    theirs = torchvision.ops.nms(torch.from_numpy(b).double(), torch.from_numpy(s).double(), thresh).numpy()
    idx, count = boxes.nms(b, s, np.ones(len(b), bool), thresh, len(b))
    np.testing.assert_array_equal(np.asarray(idx)[: int(count)], theirs)


@pytest.mark.isa
def test_nms_suppresses_only_strictly_above_the_threshold():
    # heights 5 and 4.75: every product and sum is exact, so the IoUs are exactly 0.5 and 0.475
    # (the division correctly rounded) on any CPU, FMA or not
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.75]], np.float32)
    s = np.array([0.9, 0.8, 0.7], np.float32)
    v = np.ones(3, bool)
    for thr in (0.5, 0.475, 0.45):
        theirs = torchvision.ops.nms(torch.from_numpy(b), torch.from_numpy(s), thr).numpy()
        idx, c = boxes.nms(b, s, v, thr, 3)
        assert np.array_equal(np.asarray(idx)[: int(c)], theirs)
    assert int(boxes.nms(b, s, np.zeros(3, bool), 0.5, 3)[1]) == 0


@pytest.mark.isa
@pytest.mark.parametrize("n,groups", [(200, 5), (1500, 7)])      # coordinate trick, then vanilla path
def test_batched_nms_matches_torchvision(n, groups):
    rng = np.random.default_rng(n)
    b, s = (a.astype(np.float64) for a in _clustered(rng, n, clusters=20))
    g = rng.integers(0, groups, n).astype(np.int32)
    valid = np.ones(n, bool)
    valid[::11] = False
    sel = np.nonzero(valid)[0]
    tb, ts, tg = (torch.from_numpy(x[sel]) for x in (b, s, g.astype(np.int64)))
    theirs = sel[torchvision.ops.batched_nms(tb, ts, tg, 0.5).numpy()]
    with jax.enable_x64(True):
        idx, count = jax.jit(boxes.batched_nms, static_argnums=(4, 5))(b, s, g, valid, 0.5, n)
        assert int(count) == len(theirs)
        np.testing.assert_array_equal(np.asarray(idx)[: int(count)], theirs)


# ---------------------------------------------------------------------------------------------
# transform
# ---------------------------------------------------------------------------------------------
def _tv_transform(images_chw, **kw):
    t = GeneralizedRCNNTransform(**kw)
    t.eval()
    il, _ = t([torch.from_numpy(im) for im in images_chw])
    return il.tensors.numpy().transpose(0, 2, 3, 1), il.image_sizes


# torch's float32 resize is not one function across CPUs: its vectorised kernels fuse the source
# index's multiply-add (one rounding), its scalar kernel (ATEN_CPU_CAPABILITY=default) does not,
# and the weights then differ by up to 7.6e-6 (3.6e-15 in float64). archc follows the fused
# form; the parity with torch is checked in float64, where every CPU agrees, and the float32
# weights against the exact ones within one rounding of the source index.
@pytest.mark.isa
@pytest.mark.parametrize("shapes,kw", [
    ([(300, 300), (240, 400)], dict(min_size=300, max_size=300, fixed_size=(300, 300), size_divisible=1,
                                     image_mean=[0.48235, 0.45882, 0.40784], image_std=[1 / 255] * 3)),
    ([(480, 640), (333, 517), (90, 1000)], dict(min_size=320, max_size=640, image_mean=[0.485, 0.456, 0.406],
                                                image_std=[0.229, 0.224, 0.225])),
    ([(480, 480), (601, 377)], dict(min_size=800, max_size=1333, image_mean=[0.485, 0.456, 0.406],
                                    image_std=[0.229, 0.224, 0.225])),
])
def test_transform_matches_generalized_rcnn_transform(shapes, kw):
    rng = np.random.default_rng(3)
    ims = [rng.uniform(0, 1, (h, w, 3)) for h, w in shapes]                 # float64
    theirs, tsizes = _tv_transform([im.transpose(2, 0, 1) for im in ims], **kw)
    spec = DetectInput(mean=tuple(kw["image_mean"]), std=tuple(kw["image_std"]),
                                    min_size=kw["min_size"], max_size=kw["max_size"],
                                    size_divisible=kw.get("size_divisible", 32), fixed_size=kw.get("fixed_size"))
    with jax.enable_x64(True):
        ours, sizes = transform.transform(ims, spec)
        ours = np.asarray(ours)
    assert ours.dtype == np.float64 and theirs.dtype == np.float64
    assert [tuple(s) for s in tsizes] == sizes and ours.shape == theirs.shape
    scale = float(np.max(np.abs(theirs)))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12 * scale)


@pytest.mark.isa
@pytest.mark.parametrize("n_in,n_out", [(240, 300), (400, 300), (480, 800), (601, 800), (1000, 1333), (7, 3)])
def test_interpolation_weights_are_torchs(n_in, n_out):
    """One-hot images through F.interpolate give torch's weight matrix (in float64, the same on
    every CPU) along an axis; archc's weights in float64 and float32 are within that dtype's
    roundings of it (the scale in / out rounded once, then the source index
    scale · (dst + 0.5) - 0.5 rounded once: ~1e-13 and ~1e-5 at 1000 pixels)."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :].repeat(1, 2, 1)[None]     # channel k: 1 at column k
    theirs = torch.nn.functional.interpolate(eye, size=(2, n_out), mode="bilinear",
                                             align_corners=False)[0, :, 0, :].numpy().T

    def matrix(dtype):
        i0, i1, w0, w1 = transform._linear_taps(n_in, n_out, dtype)
        m = np.zeros((n_out, n_in), np.float64)
        np.add.at(m, (np.arange(n_out), i0), w0)
        np.add.at(m, (np.arange(n_out), i1), w1)
        return m
    def rounding(dtype):
        scale = dtype(n_in) / dtype(n_out)
        src = np.abs(scale * (np.arange(n_out) + 0.5) - 0.5).astype(dtype)
        return float(((np.spacing(scale) * (np.arange(n_out) + 0.5) + np.spacing(src)) / 2).max())
    for dtype in (np.float64, np.float32):
        np.testing.assert_allclose(matrix(dtype), theirs, rtol=0, atol=rounding(dtype))


def test_resized_size_is_computed_in_double():
    spec = DetectInput(min_size=800, max_size=1333)
    assert transform.resized_size(480, 640, spec) == (800, 1066)
    assert transform.resized_size(480, 480, spec) == (800, 800)          # float32 would give 799
    assert transform.resized_size(100, 1000, spec) == (133, 1333)


def test_rescale_boxes_matches_resize_boxes():
    rng = np.random.default_rng(4)
    b = _random_boxes(rng, 50)
    theirs = resize_boxes(torch.from_numpy(b), [300, 300], [427, 640]).numpy()
    np.testing.assert_array_equal(np.asarray(transform.rescale_boxes(b, (300, 300), (427, 640))), theirs)
    batched = transform.rescale_boxes(jnp.stack([b, b]), jnp.array([[300, 300]] * 2), jnp.array([[427, 640], [300, 300]]))
    np.testing.assert_array_equal(np.asarray(batched[0]), theirs)
    np.testing.assert_array_equal(np.asarray(batched[1]), b)
