"""The graph's structural queries (compiler/graph_queries.py): which nodes outputs depend on, which
node stands for a block, checked against what the elaborator recorded; and that they, and the
tools that only need the graph, run without importing JAX."""
import subprocess
import sys
from pathlib import Path

import pytest

import archc
from archc.compiler import graph_queries
from archc.compiler.build import build_graph

ARCHITECTURES = Path(archc.__file__).parent / "architectures"


def test_a_stage_stands_for_the_node_the_elaborator_labelled():
    g = build_graph("resnet18")
    found = graph_queries.scopes(g)
    stages = [s for s in g.aliases if s not in g.nodes]
    assert stages and {s: found[s] for s in stages} == {s: g.aliases[s] for s in stages}
    # a block instance inside a stage: the node the next block reads
    assert found["layer1.0"] == g.nodes["layer1.1.conv1"].inputs[0]


def test_needed_is_what_the_output_reads_up_to_the_given_nodes():
    g = build_graph("resnet18")
    order = list(g.nodes)
    out = g.aliases["layer1"]
    # a chain of stages: everything before layer1's output, and nothing after it
    assert graph_queries.needed(g, [out]) == frozenset(order[:order.index(out) + 1])
    stem = g.aliases["stem"]
    given = graph_queries.needed(g, [out], frozenset({stem}))
    assert stem in given and "input" not in given
    assert given == frozenset(order[order.index(stem):order.index(out) + 1])


def test_an_unknown_output_is_refused_with_close_names():
    g = build_graph("resnet18")
    blocks = graph_queries.scopes(g)
    assert graph_queries.check_outputs(g, blocks, "layer3") == ("layer3",)
    assert graph_queries.check_outputs(g, blocks, None) is None
    with pytest.raises(ValueError, match="no node or block named 'layer9'; did you mean 'layer4', 'layer3'"):
        graph_queries.check_outputs(g, blocks, ["layer9"])


def test_graph_tools_do_not_import_jax(tmp_path):
    # one process runs the tools that only need the graph: the picture, the formatter, the sizes
    commands = [["graph", "lenet5", "-o", str(tmp_path / "lenet5.svg")],
                ["fmt", "--check", str(ARCHITECTURES / "lenet5.arch")], ["check", "--sizes", "lenet5"]]
    code = ("import sys\nfrom archc.cli import main\nfrom archc.compiler import graph_queries\n"
            "from archc.lsp import analysis\n"
            f"for args in {commands!r}:\n"
            "    assert main(args) in (0, None), args\n"
            "assert 'jax' not in sys.modules, 'jax imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
