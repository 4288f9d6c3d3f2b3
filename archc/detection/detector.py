"""The Detector base: a network's post-processing, built from its declarations
(archc/detection/declare.py). Each kind (registry.py) subclasses it."""
from __future__ import annotations

from typing import Mapping

from .declare import Detect, class_names
from .postprocess import Detections


class DetectError(ValueError):
    """A user-facing problem with a detection request (printed without a traceback)."""


class Detector:
    """A network's post-processing, from its declarations. Subclasses set ``heads`` (the node
    names the network must output) and implement ``postprocess``; a detector whose network
    runs in stages (Faster R-CNN) overrides ``run``."""
    kind = "?"

    def __init__(self, model, decl: Detect):
        self.model, self.decl, self.graph = model, decl, model.graph
        d = self.graph.declarations.get("detect_input")
        if d is None:
            raise DetectError(f"{model.name}: the network declares no detect_input(...) (its input transform)")
        self.transform_spec = d
        self.names = class_names(decl.names)
        self.heads = tuple(decl.scores) + tuple(decl.boxes)

    def need(self, kind: str):
        d = self.graph.declarations.get(kind)
        if d is None:
            raise DetectError(f"{self.model.name}: detect(kind={self.kind!r}) needs a {kind}(...) declaration")
        return d

    def run(self, variables, batch, image_sizes) -> Detections:
        """The network and the post-processing on a transformed batch (NHWC) whose images have
        the (unpadded) sizes ``image_sizes`` (B, 2) int32."""
        outs = self.model.apply_fn(variables, batch, outputs=self.heads)
        return self.postprocess(outs, image_sizes, tuple(batch.shape[1:3]))

    def postprocess(self, outputs: Mapping, image_sizes, input_size: tuple) -> Detections:
        raise NotImplementedError
