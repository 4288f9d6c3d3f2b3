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
    input's first (node-name prefixes such as "body.layer1"); the backbone runs from the first
    stage through the last stage's layers (or up to ``end``, the first layer after it, when the
    last stage's name does not tell). Starting from pretrained weights, the last ``trainable``
    stages train and the backbone's layers before them are frozen (0: all of them);
    ``frozen_bn``: the network's batch norm then runs in inference mode, as torchvision's
    FrozenBatchNorm2d (its Faster R-CNNs; its SSDlite trains its BN)."""
    stages: tuple
    trainable: int
    frozen_bn: bool = True
    end: str = ""

    @classmethod
    def bind(cls, v: dict, ctx: DeclarationContext) -> "Backbone":
        stages = v["stages"]
        if not isinstance(stages, (list, tuple)) or not stages or not all(isinstance(s, str) and s for s in stages):
            ctx.fail("stages", f"backbone(): 'stages' is a list of layer names (\"body.layer1\", …), not {stages!r}")
        trainable = ctx.number("trainable", v["trainable"], low=0, high=len(stages), integer=True)
        if not isinstance(v["frozen_bn"], bool):
            ctx.fail("frozen_bn", f"backbone(): 'frozen_bn' is true or false, not {v['frozen_bn']!r}")
        if not isinstance(v["end"], str):
            ctx.fail("end", f"backbone(): 'end' is a layer name, not {v['end']!r}")
        return cls(tuple(stages), trainable, v["frozen_bn"], v["end"])


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _first(nodes: Sequence[str], prefix: str, model, what: str) -> int:
    for i, p in enumerate(nodes):
        if _under(p, prefix):
            return i
    raise FinetuneError(f"{model.name}: backbone(): {what} {prefix!r} has no layer with weights "
                        f"(the network's first layers: {', '.join(nodes[:4])})")


def backbone_frozen(model, param_nodes: Sequence[str], trainable: int | None = None) -> list[str]:
    """The parameterised layers (``param_nodes``, in graph order) that the network's
    ``backbone(stages=…, trainable=…)`` freezes: the backbone's layers before the first layer of
    its last ``trainable`` stages (all of them for 0), as torchvision's
    ``_resnet_fpn_extractor``/``_mobilenet_extractor``/``_vgg_extractor`` set requires_grad.
    [] when the network declares no backbone."""
    decl = model.graph.declarations.get("backbone")
    if decl is None:
        return []
    n = decl.trainable if trainable is None else trainable
    nodes = list(param_nodes)
    starts = [_first(nodes, s, model, "stage") for s in decl.stages]
    if starts != sorted(starts):
        raise FinetuneError(f"{model.name}: backbone(): the stages are listed in the network's order, "
                            f"input first ({', '.join(decl.stages)})")
    if n:
        return nodes[starts[0]:starts[len(starts) - n]]
    if decl.end:
        stop = _first(nodes, decl.end, model, "end")
    else:
        stop = max(i for i, p in enumerate(nodes) if _under(p, decl.stages[-1])) + 1
    return nodes[starts[0]:stop]


__all__ = ["backbone_frozen", "FinetuneError"]
