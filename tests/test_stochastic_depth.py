"""Stochastic depth as the reference recipes apply it: the drop_path rate of every residual block
of archc's EfficientNet, EfficientNetV2 and ConvNeXt equals torchvision's (StochasticDepth.p of
the blocks that have a residual connection, in order), and training applies it."""
from __future__ import annotations

import numpy as np
import pytest

from archc.compiler.build import build_graph

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def torchvision_rates(name: str) -> list[float]:
    with torch.device("meta"):                      # shapes only: nothing is allocated
        model = getattr(torchvision.models, name)(weights=None)
    rates = []
    for module in model.modules():
        sd = getattr(module, "stochastic_depth", None)
        if sd is not None and getattr(module, "use_res_connect", True):   # ConvNeXt's CNBlock: always
            rates.append(sd.p)
    return rates


def archc_rates(name: str) -> list[float]:
    return [n.attrs.rate for n in build_graph(name) if n.op == "drop_path"]


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b4", "efficientnet_v2_s", "efficientnet_v2_m",
                                  "convnext_tiny", "convnext_small"])
def test_per_block_rates_are_torchvision_s(name):
    ours, theirs = archc_rates(name), torchvision_rates(name)
    assert len(ours) == len(theirs) > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_training_draws_per_sample_and_inference_ignores_it():
    import jax
    import archc
    # EfficientNet-B0 without its dropout: only drop_path is random, and only in training
    model = archc.load("efficientnet_b0", input_shape=(32, 32, 3), drop=0.0, classes=4)
    assert model.program.has_dropout
    v = model.init(0)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.apply(v, x), model.apply(v, x))
    with pytest.raises(ValueError, match="random key"):
        model.apply(v, x, train=True)
    a, _ = model.apply(v, x, train=True, rng=jax.random.PRNGKey(0))
    b, _ = model.apply(v, x, train=True, rng=jax.random.PRNGKey(1))
    assert not np.allclose(a, b)
    # with every rate at 0 nothing in training is random, and no key is asked for
    still = archc.load("efficientnet_b0", input_shape=(32, 32, 3), drop=0.0, sd=0.0, classes=4)
    assert not still.program.has_dropout
