"""The CPU depthwise conv (k*k shifted slices, archc.compiler.lower._depthwise) has its own VJP,
which keeps only the input for the backward pass. Its gradients must be autodiff's of the
reference op, lax.conv_general_dilated with feature_group_count = channels."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ir_helpers import GraphBuilder
from archc.runtime.model import Model


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


GEOMETRIES = [   # kernel, strides, padding, dilation, input (h, w)
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (7, 6)),        # MobileNet's stride-1 block
    ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), (7, 8)),        # stride 2, odd and even sides
    ((3, 3), (2, 2), ((0, 1), (0, 1)), (1, 1), (8, 8)),        # TF 'same' at stride 2
    ((5, 5), (2, 2), ((2, 2), (2, 2)), (1, 1), (9, 7)),        # EfficientNet's 5x5
    ((3, 3), (1, 1), ((2, 2), (2, 2)), (2, 2), (7, 7)),        # dilated
    ((3, 2), (2, 1), ((2, 0), (0, 3)), (1, 2), (8, 5)),        # asymmetric everything
    ((3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), (6, 6)),        # unpadded
]


@pytest.mark.parametrize("kernel,strides,padding,dilation,hw", GEOMETRIES)
def test_depthwise_gradients_match_lax(kernel, strides, padding, dilation, hw, highest_precision):
    """Through BN + an activation (as in a training step): the gradients of every parameter and
    of the input equal autodiff of lax's grouped conv on the same variables."""
    c = 5
    g = GraphBuilder("dw", (*hw, c))
    g.act(g.bn(g.conv("input", c, kernel, strides, padding, dilation, groups=c, name="conv"), "bn"),
          name="relu")
    model = Model(g.output())
    from archc.compiler.lower import _cpu_conv_path
    assert _cpu_conv_path(model.graph["conv"].attrs, jnp.zeros((1, *hw, c))) == (
        "depthwise" if jax.default_backend() == "cpu" else None)
    v = model.init(0)
    x = rand(3, *hw, c)

    def loss(params, x):
        y, _ = model.apply_fn({**v, "params": params}, x, train=True)
        return jnp.sum(jnp.sin(y))

    def reference(params, x):
        p, s = params["conv"], params["bn"]
        y = lax.conv_general_dilated(x, p["kernel"], strides, padding, rhs_dilation=dilation,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=c) + p["bias"]
        mean, var = jnp.mean(y, (0, 1, 2)), jnp.var(y, (0, 1, 2))
        y = (y - mean) / jnp.sqrt(var + 1e-5) * s["scale"] + s["bias"]
        return jnp.sum(jnp.sin(jnp.maximum(y, 0)))

    ours = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(v["params"], x)
    ref = jax.jit(jax.value_and_grad(reference, argnums=(0, 1)))(v["params"], x)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_depthwise_bf16_policy_gradients_are_float32():
    """Under the bf16 policy the taps still run in float32 and the gradients come back float32,
    close to the float32 ones (within bf16 rounding of the operands)."""
    c = 4
    g = GraphBuilder("dw", (6, 6, c))
    g.bn(g.conv("input", c, 3, 1, groups=c, name="conv"), "bn")
    model = Model(g.output())
    v, x = model.init(0), rand(2, 6, 6, c)

    def grads(dtype):
        def loss(params):
            y, _ = model.apply_fn({**v, "params": params}, x, train=True, dtype=dtype)
            return jnp.sum(jnp.sin(y))
        return jax.jit(jax.grad(loss))(v["params"])

    for a, b in zip(jax.tree.leaves(grads("bfloat16")), jax.tree.leaves(grads(None))):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=5e-2, atol=5e-2)
