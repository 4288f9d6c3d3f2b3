"""The picture's graph: the IR grouped into one box per block instance (or stage, or op), runs of
the same block in a stage collapsed into one box (`bottleneck ×6`), and the edges between boxes
with the shape of the tensor each carries."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..compiler import ops
from ..compiler.build import bind_family_params
from ..compiler.ir import Graph
from ..compiler.resolve import resolve
from ..compiler.trace import TracingElaborator
from ..spec.source import ArchError, Span


@dataclass
class Box:
    id: int
    title: str                # its name in the IR: a stage, 'layer3.0', 'layer3.1–5'
    what: str                 # the block (×N) or the ops it holds
    stage: str                # the cluster it belongs to
    params: int
    shape: tuple              # of its output
    span: Span | None
    members: list = field(default_factory=list)   # the groups it stands for
    output: bool = False      # one of the network's outputs
    expandable: str | None = None                 # the name to pass to --expand
    level: int = 0            # resolution level: halvings of the input's height
    rank: int = 0             # longest path from the input
    row: int = 0              # slot among the boxes of its rank and level


@dataclass
class Edge:
    src: int
    dst: int
    shape: tuple
    level: int = 0            # the resolution level of the tensor it carries (set by _place)


@dataclass
class Picture:
    name: str
    boxes: list
    edges: list
    stages: dict              # stage -> [box ids]


def trace(spec: str, params: dict | None = None, input_shape: tuple | None = None) -> tuple[Graph, dict]:
    """Elaborate a spec; (the graph, block instance name -> (block name, call span))."""
    module = resolve(spec)
    try:
        chosen, diags = bind_family_params(module, module.preset, dict(params or {}))
        el = TracingElaborator(Graph(module.name))
        graph = el.run_program(module, chosen, input_shape, diags)
    except ArchError as e:
        raise ArchError(e.diagnostics, {**module.sources(), **e.sources}) from None
    return graph, el.units


def _levels(graph: Graph, units: dict, name: str) -> list:
    """The prefixes of a node's name that a picture can stop at, outermost first: its stage,
    then each block instance it is in (a stage that is one block instance counts twice)."""
    parts = name.split(".")
    out = [parts[0]] if parts[0] in graph.aliases or len(parts) > 1 else [name]
    for k in range(1, len(parts) + 1):
        p = ".".join(parts[:k])
        if p in units:
            out.append(p)
    return out


def picture(graph: Graph, units: dict, depth: int = 2, expand: tuple = ()) -> Picture:
    # 1. group the IR's nodes
    key = {n: (lv := _levels(graph, units, n))[min(depth, len(lv)) - 1] for n in graph.nodes}
    # A group is a contiguous run of the IR's (depth-first) order, so that the boxes stay a DAG:
    # the ops a stage holds between its block instances (maxpools between VGG blocks) are
    # boxes of their own, named by their first node.
    groups: dict = {}
    prev = segment = None
    for n in graph.nodes:
        if key[n] != prev:
            prev, segment = key[n], (n if key[n] in groups else key[n])
        key[n] = segment
        groups.setdefault(segment, []).append(n)
    # 2. collapse runs of one block within a stage
    runs: list = []
    for k, members in groups.items():
        stage, block = k.split(".")[0], units.get(k, (None,))[0]
        instance = block is not None and k.rsplit(".", 1)[-1].isdigit()
        last = runs[-1] if runs else None
        if (instance and last is not None and last["block"] == block and last["stage"] == stage and last["instance"]
                and not {stage, block, k} & set(expand)):
            last["keys"].append(k)
        else:
            runs.append({"keys": [k], "block": block, "stage": stage, "instance": instance})
    box_of: dict = {}
    boxes = []
    outputs = set(graph.outputs)
    for i, r in enumerate(runs):
        names = [n for k in r["keys"] for n in groups[k]]
        for n in names:
            box_of[n] = i
        params = sum(sum(ops.count(graph.nodes[n], graph)[:2]) for n in names)
        first, last = r["keys"][0], r["keys"][-1]
        title = first if len(r["keys"]) == 1 else f"{first}–{last.rsplit('.', 1)[-1]}"
        if r["block"] is not None:
            what = r["block"] + (f" ×{len(r['keys'])}" if len(r["keys"]) > 1 else "")
        else:
            what = " ".join(dict.fromkeys(graph.nodes[n].op for n in names))
        span = units[first][1] if first in units else graph.nodes[names[0]].span
        boxes.append(Box(i, title, what, r["stage"], params, graph.nodes[names[-1]].shape, span, r["keys"],
                         output=any(n in outputs for n in names),
                         expandable=(r["stage"] if len(r["keys"]) > 1 else None)))
    # 3. edges between boxes, each with the shape it carries
    edges: dict = {}
    for n, node in graph.nodes.items():
        for src in node.inputs:
            a, b = box_of[src], box_of[n]
            if a != b and (a, b) not in edges:
                edges[(a, b)] = Edge(a, b, graph.nodes[src].shape)
    stages: dict = {}
    for b in boxes:
        stages.setdefault(b.stage, []).append(b.id)
    pic = Picture(graph.name, boxes, list(edges.values()), stages)
    _place(pic, graph.input_shape, box_of[graph.outputs[0]])
    return pic


def _place(pic: Picture, input_shape: tuple, primary: int) -> None:
    """Rank by longest path from the input, level by resolution (a U-Net's encoder goes down,
    its decoder comes back up), and give boxes that share a rank and level their own rows,
    the main path's first."""
    ins: dict = {b.id: [] for b in pic.boxes}
    for e in pic.edges:
        ins[e.dst].append(e.src)
    h0 = input_shape[0] if len(input_shape) == 3 else None

    def level(shape: tuple) -> int | None:
        return max(0, math.floor(math.log2(h0 / shape[0]) + 0.3)) if len(shape) == 3 and h0 else None
    for b in pic.boxes:                      # boxes are in topological order
        b.rank = 1 + max((pic.boxes[s].rank for s in ins[b.id]), default=-1)
        b.level = level(b.shape)
        if b.level is None:                  # a vector: where its input was
            b.level = max((pic.boxes[s].level for s in ins[b.id]), default=0)
    for e in pic.edges:                      # a box's inner tensor read elsewhere (@body.features.3)
        e.level = level(e.shape)
        if e.level is None:
            e.level = pic.boxes[e.src].level
    main = _main_path(pic, ins, primary)
    taken: dict = {}
    for b in sorted(pic.boxes, key=lambda b: (b.id not in main, b.id)):
        slot = (b.rank, b.level)
        b.row = taken.get(slot, 0)
        taken[slot] = b.row + 1


def _main_path(pic: Picture, ins: dict, primary: int) -> set:
    """The longest chain ending at the primary output."""
    b = pic.boxes[primary]
    path = {b.id}
    while ins[b.id]:
        b = max((pic.boxes[s] for s in ins[b.id]), key=lambda x: x.rank)
        if b.id in path:     # boxes that group nodes of two branches may meet twice
            break
        path.add(b.id)
    return path
