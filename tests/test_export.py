"""Export (issue 17): ONNX run by ONNX Runtime, StableHLO called back by JAX, and the generated
Flax source all compute archc's function; bad input gives a clear error and leaves no file.

References are archc's own JAX outputs: the exports are held to the function archc computes
(whose parity with the reference libraries is tests/test_weights_parity.py's job)."""
from __future__ import annotations

import importlib.util
import os
import stat

import jax
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import archc  # noqa: E402
from archc.compiler import library, ops  # noqa: E402
from archc.compiler.build import build_graph  # noqa: E402
from archc.compiler.flax_source import to_flax_source  # noqa: E402
from archc.compiler.onnx import INLINE_LIMIT, ONNX_RULES, ExportError, to_onnx  # noqa: E402
from archc.runtime.export import onnx_session  # noqa: E402
from archc.runtime.model import Model  # noqa: E402
from archc.spec.source import ArchError  # noqa: E402

from ir_helpers import GraphBuilder  # noqa: E402
from test_lowering import every_op_graph, roi_op_graph  # noqa: E402

TOLERANCE = 1e-4          # relative to the output's scale where random weights make it large


def randomised(model: Model, seed: int = 0) -> dict:
    """Random weights with BN statistics, scales and shifts away from their init (an export
    that dropped the mean or swapped var for std would pass with the init's 0s and 1s)."""
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(np.asarray, model.init(seed))

    def vary(path, a):
        leaf = path[-1].key
        if leaf == "mean":
            return (0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        if leaf == "var":
            return rng.uniform(0.5, 2.0, a.shape).astype(np.float32)
        if leaf in ("scale", "bias") and a.ndim == 1:
            return (a + 0.2 * rng.standard_normal(a.shape)).astype(np.float32)
        return a
    return jax.tree_util.tree_map_with_path(vary, variables)


def close(got, want) -> float:
    """The largest difference relative to the output's scale (at least 1)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))


def smallest_input(name: str) -> tuple | None:
    """The smallest square input the spec accepts among a few sizes below its own (None: its own)."""
    own = build_graph(name).input_shape
    for size in (32, 64, 96, 128, 192, 299):
        if size >= own[0]:
            return None
        try:
            build_graph(name, input_shape=(size, size, own[2]))
            return (size, size, own[2])
        except ArchError:
            continue
    return None


def archc_outputs(model: Model, variables, x, outputs) -> dict:
    """archc's outputs, its program compiled without XLA's expensive LLVM passes: the same
    values (to float rounding), a third of the compile time, which is what the sweep pays."""
    fn = jax.jit(lambda v, x: model.apply_fn(v, x, outputs=outputs))
    compiled = fn.lower(variables, x).compile({"xla_backend_optimization_level": 0,
                                                "xla_llvm_disable_expensive_passes": True})
    return {k: np.asarray(a) for k, a in compiled(variables, x).items()}


def check_onnx(model: Model, variables, layout="nchw", opset=None, batches=(1, 3)):
    """One ONNX file at a symbolic batch, run with graph optimisations off and on, at each batch,
    against archc's outputs (every graph output, by name)."""
    onnx_model = archc.export(model, variables, format="onnx", layout=layout, opset=opset)
    outputs = list(model.graph.outputs)
    x = np.random.default_rng(1).standard_normal((max(batches),) + model.input_shape).astype(np.float32)
    want = archc_outputs(model, variables, x, outputs)       # one compile; smaller batches are its rows
    for optimize in (False, True):
        session = onnx_session(onnx_model, optimize=optimize)
        assert [o.name for o in session.get_outputs()] == outputs
        for b in batches:
            xb = x[:b] if layout == "nhwc" else x[:b].transpose(0, 3, 1, 2)
            for name, got in zip(outputs, session.run(None, {session.get_inputs()[0].name: xb})):
                ref = np.asarray(want[name][:b])
                if layout == "nchw" and ref.ndim == 4:
                    ref = ref.transpose(0, 3, 1, 2)
                err = close(got, ref)
                assert err <= TOLERANCE, f"{model.name} {name} batch {b} optimize={optimize}: {err:.2e}"
    return onnx_model


# ---------------------------------------------------------------------------------------------
# Every op on ONNX Runtime (that every op has a rule: tests/test_registry.py)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_every_op_graph_onnx(layout):
    model = Model(every_op_graph(dropout=0.3).output("fc", "se"))     # two outputs, one a feature map
    onnx_model = check_onnx(model, randomised(model), layout=layout)
    import onnx
    onnx.checker.check_model(onnx_model, full_check=True)
    assert onnx_model.ir_version == onnx.helper.find_min_ir_version_for(list(onnx_model.opset_import))
    assert onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {o.name for o in onnx_model.graph.output} == {"fc", "se"}


def test_decomposed_layernorm_and_ops_at_opset_13():
    """Below opset 17 LayerNormalization is decomposed; the rest stays exact at opset 13 (the
    ReduceMean/Max axes attribute, before opset 18 made them an input)."""
    model = Model(every_op_graph(dropout=0.0).output())
    onnx_model = check_onnx(model, randomised(model), opset=13)
    assert "LayerNormalization" not in {n.op_type for n in onnx_model.graph.node}


def activation_graph():
    g = GraphBuilder("activations", (5, 5, 6))
    branches = []
    for fn, alpha in ((a.name, a.alpha) for a in ops.ACTIVATIONS.values()):
        x = g.conv("input", 6, 1, name=f"{fn}_conv")
        branches.append(g.act(x, fn, name=fn, **({} if alpha is None else {"alpha": alpha * 1.5})))
    x = g.add("concat", branches, name="cat")
    x = g.add("lrn", x, name="lrn_even", size=4, alpha=1e-2, beta=0.75, k=2.0)   # even: not ONNX LRN's window
    x = g.pool(x, "avg", 3, 2, padding=((1, 1), (1, 1)), extra=((0, 1), (0, 1)), name="ceil_avg")
    x = g.add("adaptive_pool", x, name="adaptive", kind="max", out=(2, 2))        # 3 -> 2: unequal windows
    x = g.add("upsample", x, name="up", factor=(2, 3), method="nearest")
    return g.output()


@pytest.mark.parametrize("opset", [17, 20])
def test_activations_and_awkward_windows(opset):
    model = Model(activation_graph())
    check_onnx(model, randomised(model), opset=opset)


def test_pytorch_constants_not_onnx_defaults():
    model = Model(activation_graph())
    nodes = {n.op_type: n for n in to_onnx(model.graph, randomised(model)).graph.node}
    alpha = {a.name: a.f for a in nodes["HardSigmoid"].attribute}["alpha"]
    assert abs(alpha - 1 / 6) < 1e-7                               # ONNX's default is 0.2


# ---------------------------------------------------------------------------------------------
# Every built-in on ONNX Runtime (the sweep; its time is in docs/export.md)
# ---------------------------------------------------------------------------------------------
def _representatives() -> set:
    """The built-in with the fewest nodes of each .arch file: the default tier's share of the
    sweep (every family once; the slow tier runs them all)."""
    smallest: dict = {}
    for name, (path, _) in library.index().items():
        n = len(build_graph(name).nodes)
        if path not in smallest or n < smallest[path][0]:
            smallest[path] = (n, name)
    return {name for _, name in smallest.values()}


_REPRESENTATIVES = _representatives()


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in _REPRESENTATIVES else pytest.mark.slow)
                                  for n in library.names()])
def test_builtin_onnx_matches_archc(name):
    graph = build_graph(name, input_shape=smallest_input(name))
    if sum(np.prod(v.shape) for v in ops.variable_specs(graph)) * 4 >= INLINE_LIMIT:
        with pytest.raises(ExportError, match="GiB: archc writes ONNX weights inline"):   # before any work
            archc.export(Model(graph), {}, format="onnx")
        return
    if len(graph.inputs) > 1:
        pytest.skip("a second graph input (R-CNN proposals): its ONNX export is tested in tests/test_roi.py")
    model = Model(graph)
    check_onnx(model, randomised(model))


# ---------------------------------------------------------------------------------------------
# StableHLO and Flax source
# ---------------------------------------------------------------------------------------------
def test_stablehlo_round_trip_at_two_batch_sizes(tmp_path):
    model = Model(every_op_graph(dropout=0.3).output("fc", "se"))
    variables = randomised(model)
    path = archc.export(model, variables, tmp_path / "every_op.stablehlo")
    run = archc.load_exported(path)
    assert run.outputs == ["fc", "se"]
    for b in (1, 4):
        x = np.random.default_rng(b).standard_normal((b,) + model.input_shape).astype(np.float32)
        got, want = run(x), model.apply(variables, x, outputs=["fc", "se"])
        for name in ("fc", "se"):
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))


def test_stablehlo_builtin_fixed_batch(tmp_path):
    model = archc.load("mobilenet_v3_small", input_shape=(32, 32, 3))
    variables = randomised(model)
    run = archc.load_exported(archc.export(model, variables, tmp_path / "m.stablehlo", batch=2))
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(run(x)), np.asarray(model.apply(variables, x)), rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="(?i)shape"):
        run(np.zeros((3, 32, 32, 3), np.float32))


def load_module(source: str, path):
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Ten built-ins that, with the all-ops graph, use every op (asserted below).
FLAX_BUILTINS = ["alexnet_paper", "googlenet", "keras/efficientnet_b0", "keras/nasnet_mobile", "inception_resnet_v1",
                 "shufflenet_v2_x0_5", "ssd300_vgg16", "unet", "yolo_v1", "mobilenet_v3_small"]


def test_flax_builtins_span_every_op():
    used = ({n.op for name in FLAX_BUILTINS for n in build_graph(name)} | {n.op for n in every_op_graph().output()}
            | {n.op for n in roi_op_graph().output()})      # the RoI ops: tests/test_roi.py
    assert used == set(ops.OPS), sorted(set(ops.OPS) - used)


@pytest.mark.parametrize("name", ["every_op", "activations"] + FLAX_BUILTINS)
def test_flax_source_matches_archc(name, tmp_path):
    if name == "every_op":
        model = Model(every_op_graph(dropout=0.3).output("fc", "se"))
    elif name == "activations":
        model = Model(activation_graph())
    else:
        model = archc.load(name, input_shape=smallest_input(name))
    variables = randomised(model)
    source = to_flax_source(model.graph)
    assert "archc" not in source.split('"""', 2)[2]                   # no archc import, nor any use
    module = load_module(source, tmp_path / "generated.py")
    cls = next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
               and issubclass(v, module.nn.Module))
    x = np.random.default_rng(0).standard_normal((2,) + model.input_shape).astype(np.float32)
    outputs = list(model.graph.outputs)
    want = model.apply(variables, x, outputs=outputs)
    got = jax.jit(cls().apply)(variables, x)
    got = got if isinstance(got, dict) else {outputs[0]: got}
    for o in outputs:
        assert close(got[o], want[o]) <= 1e-5, o
    # its own init makes variables of the same structure and shapes as archc's
    fresh = jax.eval_shape(lambda: cls().init(jax.random.PRNGKey(0), x))
    assert jax.tree.map(lambda a: a.shape, fresh) == jax.tree.map(lambda a: a.shape, variables)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, no file left behind
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny():
    return Model(every_op_graph(dropout=0.0).output())


def test_op_without_an_onnx_rule(tiny, tmp_path, monkeypatch):
    monkeypatch.delitem(ONNX_RULES, "lrn")
    with pytest.raises(ExportError, match="op 'lrn' has no ONNX rule \\(node 'lrn'"):
        archc.export(tiny, tiny.init(0), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_opset_too_old_for_an_op(tmp_path):
    from archc.cli import main
    out = tmp_path / "m.onnx"
    rc = main(["export", "mobilenet_v3_small", "--input", "32x32x3", "--out", str(out), "--opset", "13"])
    assert rc == 2 and not out.exists() and list(tmp_path.iterdir()) == []
    model = archc.load("mobilenet_v3_small", input_shape=(32, 32, 3))
    with pytest.raises(ExportError, match="node 'stem.hard_swish1' \\(hard_swish: ONNX HardSwish\\) needs ONNX opset 14 or newer"):
        archc.export(model, model.init(0), format="onnx", opset=13)
    with pytest.raises(ExportError, match="opset 13 or newer, not 11"):
        archc.export(model, model.init(0), format="onnx", opset=11)


def test_unwritable_output(tiny, tmp_path, capsys):
    """A missing folder, a file where the folder should be, a folder where the file should be:
    a clear error, no temporary file left, what was there unchanged."""
    from archc.cli import main
    (tmp_path / "file").write_bytes(b"old")
    (tmp_path / "folder.onnx").mkdir()
    for out in (tmp_path / "missing" / "x.onnx", tmp_path / "file" / "x.onnx", tmp_path / "folder.onnx"):
        with pytest.raises(ExportError, match=f"cannot write {out}"):
            archc.export(tiny, tiny.init(0), out)
    assert main(["export", "resnet18", "--input", "32x32x3", "--out", str(tmp_path / "missing" / "r.py")]) == 2
    assert "error: cannot write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.onnx"]
    assert (tmp_path / "file").read_bytes() == b"old" and list((tmp_path / "folder.onnx").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tiny, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "old.onnx").write_bytes(b"old")
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(ExportError, match="cannot write .*old.onnx: Permission denied"):
            archc.export(tiny, tiny.init(0), folder / "old.onnx")
    finally:
        folder.chmod(stat.S_IRWXU)
    assert [p.name for p in folder.iterdir()] == ["old.onnx"] and (folder / "old.onnx").read_bytes() == b"old"


def test_weights_of_another_network(tmp_path, capsys):
    from archc.cli import main
    from archc.runtime.variables_io import save_variables
    save_variables(archc.load("lenet5").init(0), tmp_path / "lenet.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    for weights, message in (("lenet.safetensors", "were they made for another network than 'resnet18'"),
                             ("junk.safetensors", "cannot read the weights"), ("none.safetensors", "cannot read the weights")):
        assert main(["export", "resnet18", "--input", "32x32x3", "--weights", str(tmp_path / weights),
                     "--out", str(tmp_path / "r.onnx")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r.onnx").exists()


def test_cli_export_every_format(tmp_path, capsys):
    from archc.cli import main
    from archc.runtime.variables_io import save_variables
    model = archc.load("resnet18", input_shape=(32, 32, 3))
    variables = randomised(model)
    save_variables(variables, tmp_path / "w.safetensors")
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    want = np.asarray(model.apply(variables, x))
    for fmt, suffix in (("onnx", ".onnx"), ("stablehlo", ".stablehlo"), ("flax", ".py")):
        out = tmp_path / f"r{suffix}"
        assert main(["export", "resnet18", "--input", "32x32x3", "--weights", str(tmp_path / "w.safetensors"),
                     "--format", fmt, "--out", str(out), "--layout" if fmt == "onnx" else "--batch",
                     "nhwc" if fmt == "onnx" else "dynamic"]) == 0
        assert f"resnet18 -> {out}" in capsys.readouterr().out
        if fmt != "flax":
            assert close(archc.load_exported(out)(x), want) <= TOLERANCE
    assert main(["export", "resnet18", "--out", str(tmp_path / "r.stablehlo"), "--layout", "nchw"]) == 2
    assert "ONNX options" in capsys.readouterr().err


def test_bench_onnxruntime_backend(capsys):
    from archc.cli import main
    assert main(["bench", "lenet5", "--backend", "onnxruntime", "--iters", "2", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime CPUExecutionProvider" in out and "images/s" in out
