"""RoI ops against torchvision.ops (roi_align, roi_pool, MultiScaleRoIAlign) on random and
boundary boxes, the per-RoI axis through flatten and dense, and their ONNX and Flax exports."""
from __future__ import annotations

from collections import OrderedDict

import jax
import numpy as np
import pytest

import archc
from archc.compiler import kernels
from archc.compiler.build import build_graph
from archc.runtime.model import Model
from archc.spec.source import ArchError

from test_lowering import boundary_rois, roi_op_graph

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.usefixtures("highest_precision")


def _torch_rois(rois):
    n, r, _ = rois.shape
    index = torch.arange(n, dtype=torch.float32).repeat_interleave(r)[:, None]
    return torch.cat([index, torch.from_numpy(rois.reshape(-1, 4))], 1)


def _nhwc(y, n, r):
    return y.permute(0, 2, 3, 1).numpy().reshape((n, r) + tuple(y.shape[2:]) + (y.shape[1],))


@pytest.mark.parametrize("sampling,aligned", [(2, False), (2, True), (-1, False), (-1, True), (3, False)])
def test_roi_align_matches_torchvision(sampling, aligned):
    f = np.random.default_rng(0).standard_normal((2, 13, 17, 3)).astype(np.float32)
    rois = boundary_rois(2, 40, 13, 17, 0.25)
    want = torchvision.ops.roi_align(torch.from_numpy(f).permute(0, 3, 1, 2), _torch_rois(rois), (7, 7), 0.25,
                                     sampling, aligned)
    got = np.asarray(kernels.roi_align(rois, [f], (7, 7), (0.25,), sampling, aligned))
    np.testing.assert_allclose(got, _nhwc(want, 2, 40), rtol=0, atol=2e-6)


def test_roi_pool_matches_torchvision_exactly():
    f = np.random.default_rng(1).standard_normal((2, 13, 17, 3)).astype(np.float32)
    rois = boundary_rois(2, 40, 13, 17, 1 / 16, seed=2)
    want = torchvision.ops.roi_pool(torch.from_numpy(f).permute(0, 3, 1, 2), _torch_rois(rois), (7, 7), 1 / 16)
    got = np.asarray(kernels.roi_pool(rois, f, (7, 7), 1 / 16))
    np.testing.assert_array_equal(got, _nhwc(want, 2, 40))


def test_multiscale_roi_align_matches_torchvision():
    """Four FPN levels (1/4 .. 1/32 of a 256x256 image), RoIs from 1 to 800 pixels a side, so
    that every level is picked; torchvision's LevelMapper decides, archc pools from the same."""
    rng = np.random.default_rng(3)
    maps = [rng.standard_normal((2, 256 // 2**k, 256 // 2**k, 4)).astype(np.float32) for k in range(2, 6)]
    xy = rng.uniform(0, 200, (2, 60, 2))
    rois = np.concatenate([xy, xy + np.exp(rng.uniform(0, 6.7, (2, 60, 2)))], -1).astype(np.float32)
    pooler = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    features = OrderedDict((str(i), torch.from_numpy(m).permute(0, 3, 1, 2)) for i, m in enumerate(maps))
    want = pooler(features, [torch.from_numpy(r) for r in rois], [(256, 256)] * 2)
    levels = np.asarray(kernels.roi_levels(rois, (1 / 4, 1 / 8, 1 / 16, 1 / 32)))
    assert set(levels.ravel()) == {0, 1, 2, 3}
    got = np.asarray(kernels.roi_align(rois, maps, (7, 7), (1 / 4, 1 / 8, 1 / 16, 1 / 32), 2, False))
    np.testing.assert_allclose(got, _nhwc(want, 2, 60), rtol=0, atol=2e-6)


SPEC = """
param R = 6
input(20, 24, 3)
input(R, 4, name="rois")
p2: conv3(8, s=2) relu
p3: maxpool2
branch pooled: @rois roi_align([@p2, @p3], scale=[1/2, 1/4], out=3, sampling=2)
branch fast: @rois roi_pool(@p2, scale=1/2, out=2)
head: @pooled flatten("nchw") fc(16) relu
branch cls: fc(5)
branch box: @head fc(20)
output cls, box, fast
"""


def test_a_spec_with_proposals_as_second_input(tmp_path):
    path = tmp_path / "head.arch"
    path.write_text(SPEC)
    g = build_graph(str(path))
    assert g.inputs == ["input", "rois"]
    assert g.nodes["rois"].shape == (6, 4)
    assert g["pooled.roi_align1"].inputs == ("rois", "p2.relu1", "p3.maxpool1")
    assert [g[o].shape for o in g.outputs] == [(6, 5), (6, 20), (6, 2, 2, 8)]
    model = Model(g)
    v = model.init(0)
    x = np.random.default_rng(0).standard_normal((2, 20, 24, 3)).astype(np.float32)
    rois = boundary_rois(2, 6, 20, 24, 1.0)
    out = jax.jit(lambda v, x, r: model.apply(v, {"input": x, "rois": r}, outputs=["cls", "box", "fast"]))(v, x, rois)
    # the head acts on each RoI alone: one RoI's result does not depend on the others
    alone = model.apply(v, {"input": x[:1], "rois": np.repeat(rois[:1, 2:3], 6, axis=1)}, outputs=["cls"])
    np.testing.assert_allclose(alone["cls"][0, 0], out["cls"][0, 2], rtol=1e-5, atol=1e-5)
    # conv 3·3·3·8 + 8; fc6 on 3·3·8 pooled values 72·16 + 16; cls 16·5 + 5; box 16·20 + 20
    assert model.summary()["total_params"] == 224 + 1168 + 85 + 340


@pytest.mark.parametrize("text,message", [
    ('input(8, 8, 3)\ninput(5, 4, name="rois")\n@rois roi_align(7, scale=1)', "takes tensors as 'maps'"),
    ('input(8, 8, 3)\ninput(5, 3, name="rois")\nf: conv3(4)\n@rois roi_align(@f, scale=1)', "RoIs of shape Rx4"),
    ('input(8, 8, 3)\ninput(5, 4, name="rois")\nf: conv3(4)\n@rois roi_align([@f, @f], scale=1)',
     "one scale per feature map"),
    ('input(8, 8, 3)\ninput(5, 4, name="rois")\nf: conv3(4)\n@rois roi_align([@f, @f], scale=[0.3, 0.1])',
     "powers of 2"),
    ('input(8, 8, 3)\ninput(5, 4, name=3)', "name in quotes"),
    ('input(8, 8, 3)\ninput(5, 4, name="input")', "already taken"),
])
def test_bad_roi_specs_get_located_errors(tmp_path, text, message):
    path = tmp_path / "bad.arch"
    path.write_text(text + "\n")
    with pytest.raises(ArchError, match=message) as err:
        build_graph(str(path))
    assert "bad.arch:" in str(err.value)


def _onnx_check(model, variables, feeds, outputs):
    pytest.importorskip("onnxruntime")
    from archc.runtime.export import onnx_session
    onnx_model = archc.export(model, variables, format="onnx", opset=16)
    want = model.apply(variables, feeds, outputs=outputs)
    session = onnx_session(onnx_model, optimize=True)
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {"input": feeds["input"].transpose(0, 3, 1, 2), "rois": feeds["rois"]})))
    return {o: float(np.abs(got[o] - np.asarray(want[o])).max()) for o in outputs}


@pytest.mark.parametrize("aligned", [False, True])
def test_onnx_roi_align_and_roi_pool(aligned):
    """ONNX Runtime's RoiAlign (output_half_pixel / half_pixel) and MaxRoiPool on RoIs inside
    the map and partly outside it (the cases where their kernels and torchvision's agree; ORT
    clamps sample coordinates the same way)."""
    g = roi_op_graph(aligned=aligned)
    g.graph.nodes.pop("levels")                        # multi-level: no ONNX operator (below)
    model = Model(g.output("fc", "pool"))
    variables = model.init(0)
    rng = np.random.default_rng(4)
    xy = rng.uniform(-2, 16, (3, 12, 2))
    rois = np.concatenate([xy, xy + rng.uniform(0.5, 9, (3, 12, 2))], -1).astype(np.float32)
    feeds = {"input": rng.standard_normal((3, 9, 10, 3)).astype(np.float32), "rois": rois}
    errors = _onnx_check(model, variables, feeds, ["fc", "pool"])
    assert errors["pool"] == 0 and errors["fc"] < 1e-5, errors


def test_onnx_multilevel_roi_align_is_a_clear_error(tmp_path):
    from archc.compiler.onnx import ExportError
    model = Model(roi_op_graph().output("levels"))
    with pytest.raises(ExportError, match="MultiScaleRoIAlign.*StableHLO"):
        archc.export(model, model.init(0), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_flax_source_of_the_roi_ops(tmp_path):
    from archc.compiler.flax_source import to_flax_source
    from test_export import load_module
    model = Model(roi_op_graph().output("fc", "levels", "pool"))
    variables = model.init(0)
    module = load_module(to_flax_source(model.graph), tmp_path / "generated.py")
    cls = next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
               and issubclass(v, module.nn.Module))
    feeds = {"input": np.random.default_rng(5).standard_normal((2, 9, 10, 3)).astype(np.float32),
             "rois": boundary_rois(2, 12, 9, 10, 0.5)}
    got = cls().apply(variables, feeds["input"], feeds["rois"])
    want = model.apply(variables, feeds, outputs=["fc", "levels", "pool"])
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-6, atol=1e-6)
