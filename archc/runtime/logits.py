"""Where a classifier's logits are: its output, or the input of a final softmax."""
from __future__ import annotations


def ends_in_softmax(graph) -> bool:
    """Whether the primary output is a softmax (the library's Keras-style networks end in one),
    so the network outputs probabilities rather than logits."""
    out = graph.nodes[graph.outputs[0]]
    return out.op == "act" and out.attrs.fn == "softmax"


def logits_node(graph) -> str:
    """The node whose output is the logits: the primary output, or its input when that is a softmax."""
    out = graph.nodes[graph.outputs[0]]
    return out.inputs[0] if ends_in_softmax(graph) else out.name
