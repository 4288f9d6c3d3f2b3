"""Fine-tuning a detector as torchvision does: which layers a pretrained backbone freezes
(``trainable_backbone_layers``, from the network's ``backbone(...)`` declaration). (A new class count needs
nothing of its own: the predictor's weights no longer fit and are re-initialised by name and
shape, runtime/train.py's ``transfer``.)"""
from __future__ import annotations

from typing import Sequence


class FinetuneError(ValueError):
    """A backbone declaration that does not fit the network (CLI: one line, exit status 2)."""


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def backbone_frozen(model, param_nodes: Sequence[str], trainable: int | None = None) -> list[str]:
    """The parameterised layers (``param_nodes``, in graph order) that the network's
    ``backbone(stages=…, trainable=…)`` freezes: those of its part before the first layer of the
    last ``trainable`` stages (all of the part for 0), as torchvision's
    ``_resnet_fpn_extractor``/``_mobilenet_extractor``/``_vgg_extractor`` set requires_grad.
    [] when the network declares no backbone."""
    decl = model.graph.declarations.get("backbone")
    if decl is None:
        return []
    n = decl.trainable if trainable is None else trainable
    part = [p for p in param_nodes if _under(p, decl.part)]
    for s in decl.stages:
        if not any(_under(p, s) for p in part):
            raise FinetuneError(f"{model.name}: backbone(): stage {s!r} has no layer with weights "
                                f"(the part's first layers: {', '.join(part[:4])})")
    if n == 0:
        return part
    first = decl.stages[len(decl.stages) - n]
    cut = next(i for i, p in enumerate(part) if _under(p, first))
    return part[:cut]


__all__ = ["backbone_frozen", "FinetuneError"]
