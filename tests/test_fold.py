"""BN folding: the folded network computes the unfolded one's function to 1e-5."""
import jax
import numpy as np
import pytest

import archc
from archc.compiler.fold import foldable_pairs


def randomised_stats(model, seed=0):
    v = model.init(seed=seed)
    rng = np.random.default_rng(seed)
    stats = {k: {"mean": rng.normal(0, 0.5, d["mean"].shape).astype(np.float32),
                 "var": rng.uniform(0.5, 2.0, d["var"].shape).astype(np.float32)} for k, d in v["batch_stats"].items()}
    params = {k: dict(d) for k, d in v["params"].items()}
    for k, d in params.items():
        if "scale" in d and k in stats:
            d["scale"] = rng.uniform(0.5, 1.5, d["scale"].shape).astype(np.float32)
            d["bias"] = rng.normal(0, 0.2, d["bias"].shape).astype(np.float32)
    return {"params": params, "batch_stats": stats}


@pytest.mark.usefixtures("highest_precision")
@pytest.mark.parametrize("name,shape", [("resnet18", (64, 64, 3)), ("mobilenet_v2", (64, 64, 3)), ("keras/resnet50_v2", (64, 64, 3))])
def test_folded_equals_unfolded(name, shape):
    model = archc.load(name, input_shape=shape)
    v = randomised_stats(model)
    folded_model, fv = model.fold_batchnorm(v)
    n_pairs = len(foldable_pairs(model.graph))
    assert n_pairs > 0
    assert len(folded_model.graph.nodes) == len(model.graph.nodes) - n_pairs
    x = jax.random.normal(jax.random.PRNGKey(0), (2,) + shape)
    y, yf = np.asarray(model.apply(v, x)), np.asarray(folded_model.apply(fv, x))
    assert np.max(np.abs(y - yf)) <= 1e-5 * max(1.0, np.max(np.abs(y)))
