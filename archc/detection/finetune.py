"""Fine-tuning a detector as torchvision does: the ``backbone(...)`` declaration and which
layers a pretrained backbone freezes (``trainable_backbone_layers``). (A new class count needs
nothing of its own: the predictor's weights no longer fit and are re-initialised by name and
shape, runtime/train.py's ``transfer``.)"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..compiler.declarations import DeclarationContext, declaration


class FinetuneError(ValueError):
    """A backbone declaration that does not fit the network (CLI: one line, exit status 2)."""


@declaration("backbone")
@dataclass(frozen=True)
class Backbone:
    """The pretrained part of a detector, for fine-tuning as torchvision does
    (``trainable_backbone_layers``): ``stages`` the name of each stage's first layer, the
    input's first (node-name prefixes, such as "body.layer1"); starting from pretrained weights,
    the last ``trainable`` stages train and the layers of the part before them are frozen
    (0: the whole part frozen); ``frozen_bn``: the network's batch norm then runs in inference
    mode, as torchvision's FrozenBatchNorm2d (its Faster R-CNNs; its SSDlite trains its BN)."""
    stages: tuple
    trainable: int
    frozen_bn: bool = True

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "Backbone":
        stages = v["stages"]
        if not isinstance(stages, (list, tuple)) or not stages or not all(isinstance(s, str) and s for s in stages):
            ctx.fail("stages", f"backbone(): 'stages' is a list of layer names (\"body.layer1\", …), not {stages!r}")
        part = {s.split(".")[0] for s in stages}
        if len(part) != 1:
            ctx.fail("stages", f"backbone(): the stages are layers of one part, got {sorted(part)}")
        trainable = ctx.number("trainable", v["trainable"], low=0, high=len(stages), integer=True)
        if not isinstance(v["frozen_bn"], bool):
            ctx.fail("frozen_bn", f"backbone(): 'frozen_bn' is true or false, not {v['frozen_bn']!r}")
        return cls(tuple(stages), trainable, v["frozen_bn"])

    @property
    def part(self) -> str:
        return self.stages[0].split(".")[0]


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
