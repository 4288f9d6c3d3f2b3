"""The memory estimate (compiler/memory.py) against XLA's own ``compiled.memory_analysis()``.

Inference: the estimated peak of live activations (plus XLA's kernel workspace) against XLA's
temporary buffers. Training step (forward, backward, an SGD-with-momentum update, parameters
and optimizer state donated): one parameter-sized set of buffers plus the activations at the
step's estimated peak (and the kernel workspace), against the same.
"""
from __future__ import annotations

import json

import pytest

from archc.cli import main
from archc.compiler import memory, ops
from archc.compiler.build import build_graph

BATCH = 8
TOLERANCE = 0.15


def xla_temp_bytes(graph, batch: int) -> tuple:
    """XLA's temporary bytes for a jitted inference and a jitted training step of `graph`."""
    import jax
    import jax.numpy as jnp
    import optax

    from archc.runtime.model import Model
    model = Model(graph)
    variables = model.init(seed=0)
    x = jnp.zeros((batch,) + model.input_shape, jnp.float32)
    infer = jax.jit(lambda v, x: model.apply_fn(v, x)).lower(variables, x).compile().memory_analysis()
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    tx = optax.sgd(0.1, momentum=0.9)
    y = jnp.zeros((batch,), jnp.int32)

    def step(params, opt, rest, x, y):
        def loss(p):
            out, new = model.apply_fn({"params": p, **rest}, x, train=True, rng=jax.random.PRNGKey(0))
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), new
        (value, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, new.get("batch_stats"), value
    train = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), rest, x, y).compile().memory_analysis()
    return infer.temp_size_in_bytes, train.temp_size_in_bytes, infer.argument_size_in_bytes


def _compare(graph):
    """(inference error, training error) of the estimate relative to XLA's temporaries."""
    est = memory.estimate(graph, BATCH, "momentum")
    infer, train, args = xla_temp_bytes(graph, BATCH)
    mine_infer = est["workspace_bytes"] + BATCH * est["inference_activation_bytes_per_image"]
    mine_train = est["param_bytes"] + est["workspace_bytes"] + BATCH * est["training_activation_bytes_per_image"]
    # the inference arguments are exactly the variables the primary output uses (XLA drops
    # GoogLeNet's auxiliary heads) and the batch
    used = sum(_prod(v.shape) * 4 for n in memory.trained_nodes(graph)
               for v in ops.node_variables(graph.nodes[n], [graph.nodes[i].shape for i in graph.nodes[n].inputs]))
    assert args == used + BATCH * 4 * _prod(graph.input_shape)
    return mine_infer / infer - 1, mine_train / train - 1


def _prod(shape):
    out = 1
    for d in shape:
        out *= d
    return out


def test_resnet18_within_15_percent():
    """The default tier's check (about 15 s of XLA compiles); the slow tier runs seven more."""
    di, dt = _compare(build_graph("resnet18"))
    assert abs(di) < TOLERANCE and abs(dt) < TOLERANCE, (di, dt)


# At the declared 224x224 inputs unless given (XLA's compile time hardly depends on the input
# size): one network per rule that matters -- fire modules' concatenations, VGG's parameters
# and separable pools, depthwise convs, dense blocks, inception branches and padded pools,
# swish, and ResNet-18 at 64x64, whose last stage (2x2) is smaller than its 3x3 kernels.
@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("squeezenet1_0", None), ("vgg11", None), ("mobilenet_v2", None),
                                       ("densenet121", None), ("googlenet", None), ("efficientnet_b0", 96),
                                       pytest.param("resnet18", 64, marks=pytest.mark.xfail(strict=True, reason=(
                                           "since the 2x2 convs run as im2col (issue 28) XLA's training step at "
                                           "64x64 holds 52 MB where the estimate says 72 MB (+37 %): it no longer "
                                           "keeps every parameter gradient at once; inference is within 3 %. "
                                           "The rule for that is open")))])
def test_more_networks_at_batch_8(name, size):
    di, dt = _compare(build_graph(name, input_shape=None if size is None else (size, size, 3)))
    assert abs(di) < TOLERANCE and abs(dt) < TOLERANCE, (name, di, dt)


def test_estimate_figures_and_largest_batch():
    g = build_graph("resnet18")
    e = memory.estimate(g, 8, "adam")
    assert e["param_bytes"] == 4 * 11_689_512 and e["optimizer_state_bytes"]["adam"] == 2 * e["param_bytes"]
    assert e["optimizer_state_bytes"]["sgd"] == 0
    fits = memory.largest_batch(g, memory.parse_bytes("16GiB"), "adam")
    for mode, key in (("inference", "inference_bytes"), ("training", "training_bytes")):
        n = fits[mode]
        assert memory.estimate(g, n, "adam")[key] <= 16 * 2**30 < memory.estimate(g, n + 1, "adam")[key]
    assert memory.parse_bytes("512MB") == 512 * 10**6 and memory.parse_bytes("2e9") == 2 * 10**9
    with pytest.raises(ValueError, match="16GiB"):
        memory.parse_bytes("lots")


def test_cli_build_prints_memory_and_largest_batch(capsys):
    assert main(["build", "resnet18", "--no-lower", "--batch", "8", "--memory", "16GiB"]) == 0
    out = capsys.readouterr().out
    assert "activations per image: inference" in out and "largest batch" in out
    assert main(["build", "resnet18", "--no-lower", "--json", "--memory", "1GiB", "--optimizer", "adam"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["memory"]["largest_batch"]["training"] == memory.largest_batch(build_graph("resnet18"), 2**30, "adam")["training"]
    assert main(["build", "resnet18", "--no-lower", "--memory", "lots"]) == 2
    assert "cannot read 'lots'" in capsys.readouterr().err
