"""The reference tables' numbers, recomputed by the reference libraries themselves.

test_library.py checks archc against archc/architectures/references/*.toml; this checks those
tables against torchvision and timm, so a count in them is the library's, not a copy of archc's.
Models are built on PyTorch's meta device (shapes only: no memory, no initialisation), so even
RegNetY-128GF (645M parameters) costs well under a second. Covered: every entry of every table whose reference is a torchvision or timm constructor.
"""
from __future__ import annotations

import contextlib
import re
import tomllib

import pytest

from archc.compiler import library

RECOMPUTED = sorted(p.name for p in (library.LIBRARY / "references").glob("*.toml"))
# entries a constructor names ("torchvision.models.NAME", "timm NAME"); not Keras's (test_library.py
# checks archc's Keras counts) nor references described in words (DenseNet-264's)
CONSTRUCTOR = re.compile(r"(torchvision\.models\.|timm )\w+")
ENTRIES = []
for file in RECOMPUTED:
    with (library.LIBRARY / "references" / file).open("rb") as f:
        ENTRIES += [(file, name, entry) for name, entry in tomllib.load(f).items()
                    if CONSTRUCTOR.fullmatch(entry.get("reference", ""))]


@contextlib.contextmanager
def _torchvision_on_meta(tv):
    """torchvision's RegNet computes its widths with tensors and reads them back (.tolist()),
    which a meta tensor cannot do: that step runs on the CPU, the modules on the meta device."""
    import torch
    regnet = tv.models.regnet
    rule = regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return rule(cls, *args, **kwargs)

    regnet.BlockParams.from_init_params = classmethod(on_cpu)
    try:
        with torch.device("meta"):
            yield
    finally:
        regnet.BlockParams.from_init_params = classmethod(rule)


def build_reference(reference: str):
    """The model a table's `reference` (or `timm`) names: "torchvision.models.NAME" or "timm NAME"."""
    torch = pytest.importorskip("torch")
    if reference.startswith("torchvision.models."):
        tv = pytest.importorskip("torchvision")
        with _torchvision_on_meta(tv):
            return tv.models.get_model(reference.removeprefix("torchvision.models."), weights=None)
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        return timm.create_model(reference.removeprefix("timm "), pretrained=False)


def counts(model) -> dict:
    """trainable = all parameters; non_trainable = BatchNorm running means and variances."""
    return {"trainable": sum(p.numel() for p in model.parameters()),
            "non_trainable": sum(b.numel() for name, b in model.named_buffers()
                                 if name.endswith(("running_mean", "running_var")))}


def torchvision_macs(name: str, crop: int) -> float:
    """torchvision's model table ("GFLOPS", multiply-accumulates) for the weights evaluated at
    this crop size."""
    tv = pytest.importorskip("torchvision")
    for w in tv.models.get_model_weights(name):
        if w.transforms.keywords.get("crop_size") == crop:
            return w.meta["_ops"] * 1e9
    raise LookupError(f"no {name} weights evaluated at {crop}x{crop}")


@pytest.mark.parametrize("file,name,entry", ENTRIES, ids=[f"{f}:{n}" for f, n, _ in ENTRIES])
def test_reference_counts_are_the_libraries(file, name, entry):
    for reference in filter(None, (entry["reference"], entry.get("timm") and f"timm {entry['timm']}")):
        got = counts(build_reference(reference))
        want = {k: entry[k] for k in got}
        assert got == want, f"{file} [{name}]: {reference} counts {got}, the table says {want}"
    if "reference_macs" in entry and entry["reference"].startswith("torchvision.models."):
        crop = int(entry["input"].split("x")[0])
        macs = torchvision_macs(entry["reference"].removeprefix("torchvision.models."), crop)
        assert macs == pytest.approx(entry["reference_macs"], rel=1e-9), \
            f"{file} [{name}]: reference_macs {entry['reference_macs']:,.0f}, torchvision's table {macs:,.0f}"
