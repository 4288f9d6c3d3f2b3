"""Flax NNX (issue 30): ``model.to_nnx`` computes archc's function in eval and train mode, its
state is archc's variables both ways, it splits/merges, trains with nnx.Optimizer, shards and
round-trips through orbax; ``archc export --format nnx`` runs standalone and equals archc.

References are archc's own outputs: the NNX module is held to the function archc computes
(whose parity with the reference libraries is tests/test_weights_parity.py's job)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import archc
from archc.compiler import library
from archc.compiler.build import build_graph
from archc.runtime.model import Model
from archc.runtime.nnx_module import GraphNNX, load_nnx_variables, nnx_variables
from archc.runtime.variables_io import flatten_variables

from test_export import close, randomised, smallest_input  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5          # relative to the output's scale (close())


# ---------------------------------------------------------------------------------------------
# Every built-in classifier: eval mode, and one train-mode step (batch statistics, BN updates)
# ---------------------------------------------------------------------------------------------
def _is_classifier(graph) -> bool:
    return len(graph.inputs) == 1 and len(graph.output_shape) == 1


@lru_cache(maxsize=1)
def _classifiers() -> tuple:
    """(name, representative?): every single-input built-in with a vector output; the one with
    the fewest nodes of each .arch file is the default tier's (the slow tier runs them all)."""
    smallest, names = {}, []
    for name, (path, _) in library.index().items():
        graph = build_graph(name)
        if _is_classifier(graph):
            names.append(name)
            if path not in smallest or len(graph.nodes) < smallest[path][0]:
                smallest[path] = (len(graph.nodes), name)
    chosen = {name for _, name in smallest.values()}
    return tuple((n, n in chosen) for n in sorted(names))


def assert_trees_close(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        assert close(a, b) <= TOLERANCE, jax.tree_util.keystr(path)


# the two heaviest representatives (NASNet's tracing ~100 s, Inception-v4 ~30 s on 2 busy cores)
# go to the slow tier too, to keep the default tier under 30 minutes
HEAVY = {"keras/nasnet_mobile", "inception_v4"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if rep and n not in HEAVY else pytest.mark.slow)
                                  for n, rep in _classifiers()])
def test_builtin_classifier_nnx_equals_apply(name, highest_precision):
    """One train-mode step (batch statistics, BN's running statistics updated, dropout on a
    key), then eval mode on the statistics it left: the NNX module made from archc's variables
    against model.apply_fn. Both in one program, compiled without XLA's expensive passes (what
    the sweep pays is tracing and compiling): where the two compute the same function from the
    same arrays XLA may share their work, where they differ the outputs do."""
    model = archc.load(name, input_shape=smallest_input(name))
    variables = randomised(model)
    x = np.random.default_rng(0).standard_normal((2,) + model.input_shape).astype(np.float32)
    key = jax.random.PRNGKey(3)

    def both(variables, x, key):
        net = model.to_nnx(variables)
        net.train()
        y_train = net(x, rngs=key)
        net.eval()
        got = (y_train, nnx_variables(net), net(x))
        w_train, updated = model.apply_fn(variables, x, train=True, rng=key)
        return got, (w_train, updated, model.apply_fn(updated, x))

    compiled = jax.jit(both).lower(variables, x, key).compile({"xla_backend_optimization_level": 0,
                                                               "xla_llvm_disable_expensive_passes": True})
    got, want = compiled(variables, x, key)
    assert close(got[0], want[0]) <= TOLERANCE                                        # train mode
    assert_trees_close(got[1], {c: t for c, t in want[1].items() if t})              # BN updates
    assert close(got[2], want[2]) <= TOLERANCE                                        # eval after the step


# ---------------------------------------------------------------------------------------------
# The module: names, state both ways, split/merge, Linen, rngs, outputs, bf16
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    model = archc.load("resnet18", input_shape=(32, 32, 3), classes=10)
    return model, randomised(model)


def test_state_is_archcs_variables(small):
    model, variables = small
    net = model.to_nnx(variables)
    params = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(net, nnx.BatchStat))
    assert_trees_close({"params": params, "batch_stats": stats}, variables)
    assert isinstance(net.__dict__["layer1.0.bn1"]["mean"], nnx.BatchStat)
    assert isinstance(net.__dict__["layer1.0.bn1"]["scale"], nnx.Param)
    # archc -> NNX into an existing module, NNX -> archc back
    fresh = model.to_nnx(rngs=nnx.Rngs(7))
    load_nnx_variables(fresh, variables)
    back = nnx_variables(fresh)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), back, variables))
    with pytest.raises(ValueError, match="head.fc1/kernel has shape"):
        bad = jax.tree.map(lambda a: a, variables)
        bad["params"]["head.fc1"]["kernel"] = np.zeros((3, 3), np.float32)
        load_nnx_variables(fresh, bad)
    with pytest.raises(ValueError, match="another network"):
        model.to_nnx({"params": {}})


def test_default_init_is_archcs(small):
    model, _ = small
    net = model.to_nnx(rngs=nnx.Rngs(params=5))
    want = model.init(nnx.Rngs(params=5).params())              # the same key: the same draw
    assert jax.tree.structure(nnx_variables(net)) == jax.tree.structure(want)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx_variables(net)), jax.tree.leaves(want)))


def test_split_merge_round_trip(small):
    model, variables = small
    net = model.to_nnx(variables)
    net.eval()
    graphdef, state = nnx.split(net)
    again = nnx.merge(graphdef, state)
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(net(x)))
    # a pure function of the state, as jax.jit users write it
    pure = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    assert close(pure(state, x), model.apply(variables, x)) <= TOLERANCE


def test_bridge_to_linen_matches_the_linen_wrapper(small):
    from flax import linen as nn
    from flax.nnx import bridge
    model, variables = small
    x = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype(np.float32)
    linen = bridge.to_linen(GraphNNX, model)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(linen.init(jax.random.PRNGKey(0), x)))
    wrapper = jax.eval_shape(lambda: model.module.init(jax.random.PRNGKey(0), x))
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, wrapper)
    # the same variables in both Linen modules: the same function (bridged modules train by default)
    y, _ = linen.apply(variables, x, mutable=["batch_stats"])
    assert close(y, model.module.apply(variables, x, train=True, mutable=["batch_stats"])[0]) <= TOLERANCE


def test_dropout_from_rngs_and_eval_is_deterministic():
    model = archc.load("alexnet", input_shape=(64, 64, 3), classes=10)
    variables = model.init(0)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    net = model.to_nnx(variables, rngs=nnx.Rngs(0))
    a, b = net(x), net(x)                              # the module's own dropout stream moves on
    assert not np.allclose(a, b)
    key = jax.random.PRNGKey(11)
    np.testing.assert_allclose(net(x, rngs=key), model.apply(variables, x, train=True, rng=key)[0], rtol=1e-6, atol=1e-6)
    net.eval()
    np.testing.assert_array_equal(np.asarray(net(x)), np.asarray(net(x)))
    with pytest.raises(ValueError, match="dropout layers need a random stream"):
        model.to_nnx(variables, rngs=nnx.Rngs(params=0))
    view = nnx.view(net, use_running_average=False)
    with pytest.raises(ValueError, match="together"):
        view(x)


def test_outputs_and_bf16_policy(small):
    model, variables = small
    x = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
    net = model.to_nnx(variables)
    net.eval()
    got = net(x, outputs=("layer3", "head.fc1"))
    want = model.apply(variables, x, outputs=("layer3", "head.fc1"))
    assert set(got) == {"layer3", "head.fc1"}
    for k in want:
        assert close(got[k], want[k]) <= TOLERANCE
    half = model.to_nnx(variables, dtype="bfloat16")
    half.eval()
    y = nnx.jit(lambda net, x: net(x))(half, x)          # jitted as apply: the same bf16 roundings
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, model.apply(variables, x, dtype="bfloat16"), rtol=1e-5, atol=1e-5)
    assert close(y, model.apply(variables, x)) > 1e-4              # it did compute in bf16
    with pytest.raises(ValueError, match="no node or block"):
        net(x, outputs="layer9")


def test_optimizer_step_under_nnx_jit_equals_archcs_step(small, highest_precision):
    """One nnx.Optimizer step (nnx.jit, nnx.value_and_grad) lowers the loss on its batch and
    gives the parameters archc's own step (apply_fn + optax) gives."""
    model, variables = small
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    tx = optax.sgd(0.05, momentum=0.9)

    def loss_of(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    net = model.to_nnx(variables)
    optimizer = nnx.Optimizer(net, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(net, optimizer, x):
        loss, grads = nnx.value_and_grad(lambda net: loss_of(net(x)))(net)
        optimizer.update(net, grads)
        return loss

    @jax.jit
    def archc_step(variables, opt_state, x):
        def f(params):
            logits, new = model.apply_fn({**variables, "params": params}, x, train=True)
            return loss_of(logits), new["batch_stats"]
        (loss, stats), grads = jax.value_and_grad(f, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"])
        return loss, {"params": optax.apply_updates(variables["params"], updates), "batch_stats": stats}

    before = nnx_step(net, optimizer, x)
    want_loss, want = archc_step(variables, tx.init(variables["params"]), x)
    assert abs(float(before) - float(want_loss)) <= 1e-5
    assert_trees_close(nnx_variables(net), want)
    after = loss_of(nnx.jit(lambda net, x: net(x))(net, x))
    assert float(after) < float(before)


# ---------------------------------------------------------------------------------------------
# Sharding on a data-parallel mesh and orbax: 2 CPU devices (XLA_FLAGS before JAX starts)
# ---------------------------------------------------------------------------------------------
SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import orbax.checkpoint as ocp
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import archc

    path, out = sys.argv[1], {"devices": jax.device_count()}
    model = archc.load("resnet18", input_shape=(32, 32, 3), classes=10)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    # data parallel: every variable replicated; plus a model-parallel split of the conv kernels'
    # output channels, so that the checkpoint holds arrays that are really sharded
    split = lambda s: (None,) * (len(s.shape) - 1) + ("batch",) if s.leaf == "kernel" and len(s.shape) == 4 else (None,) * len(s.shape)
    for kind, partition in (("replicated", None), ("split", split)):
        net = model.to_nnx(rngs=nnx.Rngs(0), partition=partition, mesh=mesh)
        x = jax.device_put(np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32),
                           NamedSharding(mesh, P("batch")))
        y = nnx.jit(lambda net, x: net(x))(net, x)          # one train step: BN statistics move
        state = nnx.state(net)
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(f"{path}/{kind}", state)
        ckpt.wait_until_finished()
        # restore into an abstract module made on the mesh: its variables carry the shardings
        abstract = nnx.eval_shape(lambda: model.to_nnx(rngs=nnx.Rngs(1), partition=partition, mesh=mesh))
        graphdef, target = nnx.split(abstract)
        restored = ckpt.restore(f"{path}/{kind}", target)
        again = nnx.merge(graphdef, restored)
        net.eval()
        again.eval()
        pairs = list(zip(jax.tree.leaves(state), jax.tree.leaves(nnx.state(again))))
        out[kind] = {
            "leaves": len(pairs),
            "bit_identical": all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs),
            # each restored array sharded as its variable's annotation says
            "annotated": all(b.sharding.is_equivalent_to(want, b.ndim) for b, want in
                             zip(jax.tree.leaves(nnx.state(again)), jax.tree.leaves(nnx.get_named_sharding(nnx.state(again), mesh)))),
            "sharded_leaves": sum(not b.sharding.is_fully_replicated for _, b in pairs),
            "input_sharding": str(y.sharding.spec),
            "same_output": bool(np.array_equal(np.asarray(nnx.jit(lambda n, x: n(x))(again, x)),
                                               np.asarray(nnx.jit(lambda n, x: n(x))(net, x)))),
        }
    print("RESULT" + json.dumps(out))
""")


def test_sharded_orbax_round_trip_on_two_devices(tmp_path):
    pytest.importorskip("orbax.checkpoint")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    p = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=600, cwd=str(ROOT))
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(next(l for l in p.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    print(r, file=sys.stderr)
    assert r["devices"] == 2
    for kind in ("replicated", "split"):
        assert r[kind]["leaves"] == len(Model(build_graph("resnet18", {"classes": 10}, (32, 32, 3))).variable_specs)
        assert r[kind]["bit_identical"] and r[kind]["annotated"] and r[kind]["same_output"], kind
    assert r["replicated"]["sharded_leaves"] == 0
    assert r["split"]["sharded_leaves"] == 20               # ResNet-18's 20 conv kernels


# ---------------------------------------------------------------------------------------------
# archc export --format nnx: standalone (archc cannot be imported), equal to archc
# ---------------------------------------------------------------------------------------------
STANDALONE = textwrap.dedent("""
    import importlib.util, json, sys

    class NoArchc:                       # the generated module must not need archc
        def find_spec(self, name, path=None, target=None):
            if name == "archc" or name.startswith("archc."):
                raise ImportError("archc is not importable here")
    sys.meta_path.insert(0, NoArchc())

    import jax, numpy as np
    from flax import nnx
    jax.config.update("jax_default_matmul_precision", "highest")
    source, data, out = sys.argv[1:4]
    spec = importlib.util.spec_from_file_location("generated", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = next(v for v in vars(module).values() if isinstance(v, type) and v.__module__ == "generated"
               and issubclass(v, nnx.Module))
    abstract = nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0)))
    shapes = {c: jax.tree.map(lambda a: list(a.shape), nnx.to_pure_dict(nnx.state(abstract, kind)))
              for c, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat))}
    arrays = dict(np.load(data))
    variables = {}
    for key, a in arrays.items():
        if key.startswith("variables/"):
            collection, rest = key[len("variables/"):].split("/", 1)
            node, leaf = rest.rsplit("/", 1)
            variables.setdefault(collection, {}).setdefault(node, {})[leaf] = a
    net = cls(rngs=nnx.Rngs(0))
    net.load_variables(variables)
    xs = [arrays[k] for k in sorted(k for k in arrays if k.startswith("x"))]
    y = nnx.jit(lambda net, *xs: net(*xs))(net, *xs)
    y = y if isinstance(y, dict) else {"primary": y}
    np.savez(out, **{k: np.asarray(v) for k, v in y.items()})
    print("SHAPES" + json.dumps(shapes))
    print("MODULES" + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "archc")))
""")


def _run_standalone(model: Model, variables, xs: list, tmp_path: Path, source: str) -> tuple[dict, dict]:
    (tmp_path / "generated.py").write_text(source)
    arrays = {f"variables/{k}": np.asarray(a) for k, a in flatten_variables(variables).items()}
    arrays.update({f"x{i}": x for i, x in enumerate(xs)})
    np.savez(tmp_path / "data.npz", **arrays)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-I", "-c", STANDALONE, str(tmp_path / "generated.py"), str(tmp_path / "data.npz"),
                        str(tmp_path / "out.npz")], capture_output=True, text=True, env=env, timeout=600, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    lines = {l[:6]: l for l in p.stdout.splitlines() if l[:6] in ("SHAPES", "MODULE")}
    assert json.loads(lines["MODULE"][len("MODULES"):]) == []
    return dict(np.load(tmp_path / "out.npz")), json.loads(lines["SHAPES"][len("SHAPES"):])


# ResNet-50, EfficientNet-B0 and a whole Faster R-CNN (backbone, FPN, RPN head and the box head
# on given proposals: the graph archc runs in its two phases), at small sizes that they accept
# (about a minute each on 2 busy cores: ResNet-50 in the default tier, the others slow)
NNX_EXPORTS = [("resnet50", (64, 64, 3), {}),
               pytest.param("efficientnet_b0", (64, 64, 3), {}, marks=pytest.mark.slow),
               pytest.param("fasterrcnn_mobilenet_v3_large_320_fpn", None, {"proposals": 24}, marks=pytest.mark.slow)]


@pytest.mark.parametrize("name, shape, params", NNX_EXPORTS, ids=["resnet50", "efficientnet_b0", "fasterrcnn_mobilenet_320"])
def test_nnx_source_runs_standalone_and_equals_archc(name, shape, params, tmp_path, highest_precision):
    model = archc.load(name, input_shape=shape, **params)
    variables = randomised(model)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2,) + model.input_shape).astype(np.float32)]
    if len(model.graph.inputs) == 2:                         # Faster R-CNN's proposals, in pixels
        h, w = model.input_shape[:2]
        corner = rng.uniform(0, [w - 40, h - 40], (2, model.graph.nodes["rois"].shape[0], 2))
        xs.append(np.concatenate([corner, corner + rng.uniform(8, 40, corner.shape)], -1).astype(np.float32))
    source = archc.export(model, variables, format="nnx")
    assert "archc" not in source.split('"""', 2)[2]
    got, shapes = _run_standalone(model, variables, xs, tmp_path, source)
    outputs = list(model.graph.outputs)
    want = model.apply(variables, xs[0] if len(xs) == 1 else xs, outputs=outputs)
    got = got if len(outputs) > 1 else {outputs[0]: got["primary"]}
    errors = {o: close(got[o], want[o]) for o in outputs}
    print(name, max(errors.values()), file=sys.stderr)
    assert max(errors.values()) <= TOLERANCE, errors
    assert {c: t for c, t in shapes.items() if t} == jax.tree.map(lambda a: list(a.shape), variables)  # its own init


def test_cli_export_nnx(tmp_path, capsys):
    from archc.cli import main
    out = tmp_path / "r.py"
    assert main(["export", "resnet18", "--input", "32x32x3", "--format", "nnx", "--out", str(out)]) == 0
    assert f"resnet18 -> {out} (nnx" in capsys.readouterr().out
    assert "class Resnet18(nnx.Module)" in out.read_text()
    compile(out.read_text(), str(out), "exec")


def test_the_docs_training_loop_runs(tmp_path, monkeypatch, capsys):
    """docs/flax.md's NNX training loop, as written: it trains, and what it saves is the net's."""
    import re
    doc = (ROOT / "docs" / "flax.md").read_text(encoding="utf-8")
    loop = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def train_step" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(loop, "docs/flax.md", "exec"), scope)
    losses = [float(m) for m in re.findall(r"eval loss ([0-9.]+)", capsys.readouterr().out)]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    saved = archc.load_variables(tmp_path / "resnet18_nnx.safetensors")
    assert_trees_close(saved, jax.tree.map(np.asarray, nnx_variables(scope["net"])))
