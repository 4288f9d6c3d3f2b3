"""upsample(size=@t): resizing to another tensor's height and width, as torchvision's FPN does
(F.interpolate(x, size=lateral.shape[-2:], mode="nearest"), legacy nearest: src = floor(dst ·
in / out)); matched exactly against F.interpolate at odd sizes, through the graph at sizes other
than the declared one, in the size analysis, the ONNX export and the Flax source."""
from __future__ import annotations

import numpy as np
import pytest

import archc
from archc.compiler import kernels, sizes
from archc.compiler.build import build_graph
from archc.spec.source import ArchError

torch = pytest.importorskip("torch")
F = torch.nn.functional

# (in, out) extents: the exact doubles, odd targets (FPN on an unpadded input: 63 from 32),
# downsizing, and sizes where float32's in / out rounds down (float32(2 / 82) · 41 = 0.99999994)
PAIRS = [(1, 1), (1, 5), (4, 8), (32, 63), (16, 32), (8, 15), (2, 82), (13, 50), (25, 13), (50, 13), (3, 100),
         (99, 100), (100, 99), (37, 111), (5, 7)]

FPN = """
input(61, 47, 3)
c2: conv3(4, s=2)
c3: conv3(4, s=2)
c4: conv3(4, s=2)
inner: @c4 conv1(4)
top:   add(@c3, @inner upsample(size=@c3))
top2:  add(@c2, @top upsample(size=@c2, mode="bilinear"))
output top2
"""


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_to_matches_f_interpolate_exactly(mode):
    rng = np.random.default_rng(0)
    for (hi, ho), (wi, wo) in zip(PAIRS, PAIRS[3:] + PAIRS[:3]):
        x = rng.standard_normal((2, hi, wi, 3)).astype(np.float32)
        want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(ho, wo), mode=mode,
                             **({} if mode == "nearest" else {"align_corners": False})).permute(0, 2, 3, 1).numpy()
        got = np.asarray(kernels.resize_to(x, (ho, wo), mode))
        if mode == "nearest":
            np.testing.assert_array_equal(got, want, err_msg=f"{(hi, wi)} -> {(ho, wo)}")
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"{(hi, wi)} -> {(ho, wo)}")


def test_nearest_index_is_torchs_float32_rule():
    """The float32 product, not the exact quotient: 2 → 82 reads row 0 at 41 (float32(2 / 82)
    · 41 = 0.99999994), where exact arithmetic gives 1."""
    idx = kernels.nearest_index(2, 82)
    x = torch.arange(2, dtype=torch.float32)[None, None, :, None]
    want = F.interpolate(x, size=(82, 1), mode="nearest")[0, 0, :, 0].long().numpy()
    np.testing.assert_array_equal(idx, want)
    assert idx[41] == 0 and 41 * 2 // 82 == 1


def _fpn_model(tmp_path):
    path = tmp_path / "fpn.arch"
    path.write_text(FPN)
    return archc.load(str(path))


def test_upsample_to_a_tensor_in_a_graph_at_other_sizes(tmp_path):
    """The target's size is read when the graph runs, so an input of another size than the
    declared one (as a detector's transform gives) still resizes to its lateral exactly."""
    model = _fpn_model(tmp_path)
    g = model.graph
    assert g.nodes["top.add1"].shape == (16, 12, 4)
    up = next(n for n in g if n.op == "upsample" and n.attrs.method == "nearest")
    assert up.inputs[1] == "c3.conv1" and up.attrs.factor is None
    variables = model.init(0)
    for h, w in ((61, 47), (50, 33), (64, 64), (29, 91)):
        x = np.random.default_rng(h).standard_normal((1, h, w, 3)).astype(np.float32)
        out = model.apply(variables, x, outputs=["c2", "c3", "inner", "top", "top2"])
        tt = {k: torch.from_numpy(np.asarray(v)).permute(0, 3, 1, 2) for k, v in out.items()}
        top = tt["c3"] + F.interpolate(tt["inner"], size=tt["c3"].shape[-2:], mode="nearest")
        np.testing.assert_allclose(np.asarray(out["top"]), top.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-6)
        top2 = tt["c2"] + F.interpolate(tt["top"], size=tt["c2"].shape[-2:], mode="bilinear", align_corners=False)
        np.testing.assert_allclose(np.asarray(out["top2"]), top2.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-5)


def test_size_analysis_follows_the_target(tmp_path):
    """The derived sizes agree with pushing every size through the IR; the odd sizes, where
    the top-down maps are not exact doubles, are valid and inexact."""
    path = tmp_path / "fpn.arch"
    path.write_text(FPN)
    g = build_graph(str(path))
    for axis in (0, 1):
        p = sizes.plan(g, axis)
        d = sizes.derive(p)
        for n in range(1, 400):
            r = sizes.follow(p, n)
            assert (d.valid(n), d.exact(n)) == (r.valid, r.exact), (axis, n, r)
    p = sizes.plan(g, 0)
    assert sizes.follow(p, 64).exact and not sizes.follow(p, 61).exact and sizes.follow(p, 61).valid


def test_onnx_and_flax_source(tmp_path):
    model = _fpn_model(tmp_path)
    variables = model.init(0)
    x = np.random.default_rng(1).standard_normal((2, 61, 47, 3)).astype(np.float32)
    want = np.asarray(model.apply(variables, x))
    from archc.compiler.flax_source import to_flax_source
    from test_export import load_module
    module = load_module(to_flax_source(model.graph), tmp_path / "generated.py")
    cls = next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
               and issubclass(v, module.nn.Module))
    np.testing.assert_allclose(np.asarray(cls().apply(variables, x)), want, rtol=0, atol=1e-6)
    pytest.importorskip("onnxruntime")
    from archc.runtime.export import onnx_session
    session = onnx_session(archc.export(model, variables, format="onnx", opset=16), optimize=True)
    got = session.run(None, {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2)})[0]
    got = got.transpose(0, 2, 3, 1) if got.shape[1] == 4 else got
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("text,message", [
    ("input(8, 8, 3)\na: conv3(4)\n@a upsample(2, size=@a)", "a factor f or a size=@tensor, not both"),
    ("input(8, 8, 3)\na: conv3(4)\nupsample(size=4)", "takes tensors as 'size'"),
    ("input(8, 8, 3)\na: conv3(4)\nv: gap\n@a upsample(size=@v)", "one feature map HxWxC"),
])
def test_bad_upsample_targets_get_located_errors(tmp_path, text, message):
    path = tmp_path / "bad.arch"
    path.write_text(text + "\n")
    with pytest.raises(ArchError, match=message) as err:
        build_graph(str(path))
    assert "bad.arch:" in str(err.value)
