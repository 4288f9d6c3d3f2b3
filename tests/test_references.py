"""The reference counts of archc/architectures/references/*.toml, recounted from the reference
libraries: every table whose reference is a torchvision constructor ("torchvision.models.NAME")
or a timm model ("timm NAME") is built with its tensors on PyTorch's meta device (shapes only, no
memory, no download) and its parameters and BatchNorm statistics counted."""
from __future__ import annotations

import re

import pytest

from test_library import ENTRIES

torch = pytest.importorskip("torch")

_REFERENCE = re.compile(r"(?:torchvision\.models\.(?P<tv>\w+)|timm (?P<timm>\w+))\Z")
LIBRARY_REFERENCES = {name: m for name, (_, ref) in sorted(ENTRIES.items())
                      if (m := _REFERENCE.match(ref["reference"]))}


class _TensorsOnMeta(torch.overrides.TorchFunctionMode):
    """Parameters and buffers (made by these factories) on the meta device: shapes without memory
    or random draws, while the constructors' own arithmetic (RegNet's width rule, which reads its
    tensors back with .tolist()) still runs on the CPU."""
    FACTORIES = {torch.empty, torch.zeros, torch.ones}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and "device" not in kwargs:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _build(m):
    with _TensorsOnMeta():
        if m["tv"]:
            import torchvision
            return getattr(torchvision.models, m["tv"])(weights=None)
        import timm
        return timm.create_model(m["timm"], pretrained=False)


@pytest.mark.parametrize("name", sorted(LIBRARY_REFERENCES))
def test_reference_counts_are_the_libraries(name):
    ref = ENTRIES[name][1]
    model = _build(LIBRARY_REFERENCES[name])
    trainable = sum(p.numel() for p in model.parameters())
    statistics = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert (trainable, statistics) == (ref["trainable"], ref["non_trainable"]), (
        f"{name}: {ref['reference']} has {trainable:,} / {statistics:,}, the table says "
        f"{ref['trainable']:,} / {ref['non_trainable']:,}")
