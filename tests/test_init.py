"""The initialisers of the `init(...)` declaration against the reference libraries' own: each
kernel's distribution against torch's / Flax's draw for the same shape (a two-sample
Kolmogorov-Smirnov test), each kernel's standard deviation against the formula torch computes
(torch.nn.init's fan and gain), and `zero_init_residual` against torchvision's ResNet-18.

Tolerances: a kernel of n values estimates its standard deviation with a relative standard error
of 1/sqrt(2n) (normal; 0.0075 at n = 9,408, the smallest ResNet-18 conv); the bound is 6 standard
errors, which a correct draw exceeds with probability 2e-9 per kernel. The KS test's p-value is
uniform on [0, 1] for two draws of one distribution: p > 1e-4 rejects a correct one once in
10,000, and a wrong variance (a factor 2) or a missing truncation has p < 1e-10 at these sizes.
The seeds are fixed, so each test gives the same answer every run."""
import math

import jax
import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

import archc
from archc.compiler.declarations import DeclarationError
from archc.spec.source import ArchError


def kernels(variables, graph, op):
    """(node, kernel) of each `op` node, in graph order, as torch lays them out (out, in, kh, kw)."""
    out = []
    for node in graph:
        if node.op == op:
            k = np.asarray(variables["params"][node.name]["kernel"])
            out.append((node.name, k.transpose(3, 2, 0, 1) if k.ndim == 4 else k.T))
    return out


def torch_std(shape, mode, nonlinearity):
    """The standard deviation torch.nn.init.kaiming_normal_ draws for a weight of `shape`."""
    w = torch.empty(shape)
    fan = torch.nn.init._calculate_correct_fan(w, mode)
    return torch.nn.init.calculate_gain(nonlinearity) / math.sqrt(fan)


def test_he_normal_fan_out_is_torchvisions_resnet_init():
    """torchvision's ResNet: kaiming_normal_(mode='fan_out', nonlinearity='relu') on every conv,
    the default nn.Linear init on fc, and with zero_init_residual the last BN of each block at 0."""
    import torchvision
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(zero_init_residual=True)
    model = archc.load("resnet18")
    v = model.init(0, conv="he_normal_fan_out", dense="torch_default", zero_init_residual=True)
    ours = kernels(v, model.graph, "conv")
    theirs = [m.weight.detach().numpy() for m in ref.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [k.shape for _, k in ours] == [t.shape for t in theirs]
    for (name, k), t in zip(ours, theirs):
        expected = torch_std(t.shape, "fan_out", "relu")
        assert abs(k.std() / expected - 1) < 6 / math.sqrt(2 * k.size), (name, k.std(), expected)
        assert ks_2samp(k.ravel(), t.ravel()).pvalue > 1e-4, name
    (_, fc), = kernels(v, model.graph, "dense")
    assert ks_2samp(fc.ravel(), ref.fc.weight.detach().numpy().ravel()).pvalue > 1e-4
    zero_ours = [not np.asarray(v["params"][n.name]["scale"]).any() for n in model.graph if n.op == "bn"]
    zero_ref = [not m.weight.detach().any().item() for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert zero_ours == zero_ref and sum(zero_ref) == 8


@pytest.mark.parametrize("name, reference", [
    ("lecun_normal", lambda shape: np.asarray(jax.nn.initializers.lecun_normal()(jax.random.PRNGKey(7), shape))),
    ("he_normal", lambda shape: np.asarray(jax.nn.initializers.he_normal()(jax.random.PRNGKey(7), shape))),
    ("glorot_uniform", lambda shape: np.asarray(jax.nn.initializers.glorot_uniform()(jax.random.PRNGKey(7), shape))),
    ("torch_default", lambda shape: torch.nn.Conv2d(shape[2], shape[3], shape[:2]).weight.detach().numpy()),
    ("he_normal_fan_out", lambda shape: torch.nn.init.kaiming_normal_(
        torch.empty(shape[3], shape[2], *shape[:2]), mode="fan_out", nonlinearity="relu").numpy()),
])
def test_each_initialiser_draws_the_references_distribution(name, reference, tmp_path):
    """A 3x3 conv from 64 to 128 channels (73,728 values) and a depthwise 3x3 on 128 (its fans
    as torch counts them: 9 in, 9 x 128 out) against the reference's draw for the same shape."""
    spec = tmp_path / "net.arch"
    spec.write_text(f'init(conv="{name}")\ninput 16x16x64\nconv3(128) dwconv(3)\n')
    torch.manual_seed(0)
    model = archc.load(str(spec))
    v = model.init(3)
    conv = np.asarray(v["params"]["conv1"]["kernel"])
    assert ks_2samp(conv.ravel(), np.asarray(reference(conv.shape)).ravel()).pvalue > 1e-4
    dw = np.asarray(v["params"]["dwconv1"]["kernel"])        # (3, 3, 1, 128)
    if name == "he_normal_fan_out":
        expected = torch_std((128, 1, 3, 3), "fan_out", "relu")
        assert abs(dw.std() / expected - 1) < 6 / math.sqrt(2 * dw.size)


def test_the_default_is_unchanged_and_declarations_are_checked(tmp_path):
    model = archc.load("lenet5")
    a, b = model.init(0), model.init(0, conv="lecun_normal", dense="lecun_normal")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))
    with pytest.raises(DeclarationError, match="'conv' is one of 'lecun_normal', 'he_normal'"):
        model.init(0, conv="he")
    spec = tmp_path / "bad.arch"
    spec.write_text('init(zero_init_residual=1)\ninput 8x8x3\nconv3(8)\n')
    with pytest.raises(ArchError, match="'zero_init_residual' is true or false"):
        archc.load(str(spec))
