"""Issue 3's acceptance checks on the real networks: every built-in's predicted shapes equal the
lowered Flax module's (jax.eval_shape: traced, not compiled), and the ResNet-50 API contract."""
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archc
from archc.compiler import library
from archc.compiler.build import build_graph
from archc.runtime.model import Model


@pytest.mark.parametrize("name", library.names())
def test_predicted_shapes_equal_lowered_shapes(name):
    graph = build_graph(name)
    shapes = Model(graph).eval_shapes(batch=1)
    assert set(shapes) == set(graph.nodes)
    bad = {n: (shapes[n][1:], graph.nodes[n].shape) for n in graph.nodes if tuple(shapes[n][1:]) != tuple(graph.nodes[n].shape)}
    assert not bad, f"{name}: lowered vs predicted differ at {list(bad.items())[:5]}"


@pytest.fixture(scope="module")
def resnet50():
    return archc.load("resnet50")


def test_resnet50_api(resnet50, tmp_path):
    model = resnet50
    v1, v2 = model.init(seed=0), model.init(seed=0)
    leaves1, leaves2 = jax.tree_util.tree_leaves(v1), jax.tree_util.tree_leaves(v2)
    ops = Counter(n.op for n in model.graph)
    # bias-free convs: a kernel each; BN: scale, bias, mean, var; the fc: kernel, bias
    assert len(leaves1) == len(leaves2) == ops["conv"] + 4 * ops["bn"] + 2 * ops["dense"]
    assert all(np.array_equal(a, b) for a, b in zip(leaves1, leaves2)), "init(seed=0) is not bit-identical"

    x = jax.random.normal(jax.random.PRNGKey(1), (2, 224, 224, 3))
    y = model.apply(v1, x)
    assert y.shape == (2, 1000) and bool(jnp.all(jnp.isfinite(y)))

    y_train, v_new = model.apply(v1, x, train=True)
    assert y_train.shape == (2, 1000)
    old, new = v1["batch_stats"]["stem.bn1"]["mean"], v_new["batch_stats"]["stem.bn1"]["mean"]
    assert not np.allclose(old, new), "train=True left the batch statistics unchanged"
    assert jax.tree_util.tree_structure(v_new) == jax.tree_util.tree_structure(v1)

    path = tmp_path / "r50.safetensors"
    archc.save_variables(v1, path)
    v_loaded = archc.load_variables(path)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(v1), jax.tree_util.tree_leaves(v_loaded)))
    assert np.array_equal(np.asarray(model.apply(v_loaded, x)), np.asarray(y)), "reloaded variables give other outputs"

    feats = model.apply(v1, x, outputs=["layer3", "layer4"])
    assert feats["layer3"].shape == (2, 14, 14, 1024) and feats["layer4"].shape == (2, 7, 7, 2048)
