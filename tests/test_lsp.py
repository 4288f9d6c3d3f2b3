"""The language server, driven over stdio by an LSP client as an editor drives it (one server
process for the module)."""
from pathlib import Path

import pytest

pytest.importorskip("pygls")

from archc.compiler import library                     # noqa: E402
from archc.lsp.client import Client                    # noqa: E402

GOOGLENET = library.LIBRARY / "googlenet.arch"
PRELUDE = library.LIBRARY / "prelude.arch"

BLOCKS = "block twice(c) = conv3(c) relu conv3(c) relu\n"
NET = 'import "blocks.arch"\ninput 8x8x3\na: twice(8)\nb: twice(16) twice(16)\nhead: gap fc(10)\n'


@pytest.fixture(scope="module")
def client():
    c = Client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lsp")
    (d / "blocks.arch").write_text(BLOCKS)
    (d / "net.arch").write_text(NET)
    return d


def _range(r):
    return (r["start"]["line"], r["start"]["character"], r["end"]["line"], r["end"]["character"])


def test_diagnostics_as_you_type(client, tmp_path):
    uri = (tmp_path / "typo.arch").as_uri()
    client.open(uri, "input 8x8x3\nstem: conv3(8) relu\nhead: gap fcc(10)\n")
    [d] = client.diagnostics(uri)
    assert d["message"].startswith("unknown name 'fcc'") and "did you mean 'fc'" in d["message"]
    assert _range(d["range"]) == (2, 10, 2, 13)
    assert d["severity"] == 1
    client.change(uri, "input 8x8x3\nstem: conv3(8) relu\nhead: gap fc(10)\n", 2)
    assert client.diagnostics(uri) == []
    # an error inside a block: the call site is related information
    client.change(uri, "block b(c) = conv3(c) fcc\ninput 8x8x3\nstem: b(8)\n", 3)
    [d] = client.diagnostics(uri)
    assert _range(d["range"]) == (0, 22, 0, 25)
    [note] = d["relatedInformation"]
    assert note["location"]["uri"] == uri and _range(note["location"]["range"]) == (2, 6, 2, 10)
    assert "in block 'b' called here" in note["message"]


def test_hover_shows_the_layer_output_shape(client):
    uri = GOOGLENET.as_uri()
    lines = GOOGLENET.read_text().splitlines()
    line = next(i for i, ln in enumerate(lines) if ln.startswith("inception3a:"))
    assert "inception(64,  96>128," in lines[line]
    client.open(uri, GOOGLENET.read_text())
    assert client.diagnostics(uri) == []
    hover = client.at("textDocument/hover", uri, line, lines[line].index("inception(") + 2)
    text = hover["contents"]["value"]
    assert "**`28x28x256`**" in text and "`28x28x192` →" in text
    assert "block `inception`" in text and "params" in text and "MACs" in text


def test_hover_on_an_op_gives_its_signature_and_documentation(client, tmp_path):
    uri = (tmp_path / "op.arch").as_uri()
    client.open(uri, "input 8x8x3\nstem: conv3(16, s=2) relu\n")
    assert client.diagnostics(uri) == []
    text = client.at("textDocument/hover", uri, 1, 7)["contents"]["value"]
    assert "`8x8x3` → **`4x4x16`** · 448 params" in text      # 3*3*3*16 weights + 16 biases
    assert "conv3(c, s, p='auto'" in text and "H×W×C → H'×W'×c" in text


def test_definition_across_files(client, files):
    uri = (files / "net.arch").as_uri()
    client.open(uri, NET)
    assert client.diagnostics(uri) == []
    loc = client.at("textDocument/definition", uri, 2, 4)
    assert loc["uri"] == (files / "blocks.arch").as_uri() and _range(loc["range"]) == (0, 6, 0, 11)
    # a prelude block used by a library file: the prelude's line
    g = GOOGLENET.read_text().splitlines()
    line = next(i for i, ln in enumerate(g) if ln.startswith("inception3a:"))
    loc = client.at("textDocument/definition", GOOGLENET.as_uri(), line, g[line].index("inception("))
    assert loc["uri"] == PRELUDE.as_uri()
    assert PRELUDE.read_text().splitlines()[loc["range"]["start"]["line"]].startswith("block inception(")


def test_rename_a_block_renames_every_use(client, files):
    uri = (files / "net.arch").as_uri()
    edit = client.at("textDocument/rename", uri, 3, 15, newName="pair")["changes"]
    assert sorted(_range(e["range"]) for e in edit[uri]) == [(2, 3, 2, 8), (3, 3, 3, 8), (3, 13, 3, 18)]
    assert [_range(e["range"]) for e in edit[(files / "blocks.arch").as_uri()]] == [(0, 6, 0, 11)]
    assert {e["newText"] for es in edit.values() for e in es} == {"pair"}
    refs = client.at("textDocument/references", uri, 2, 4, context={"includeDeclaration": False})
    assert len(refs) == 3


def test_completion_after_at_offers_the_tensors_in_scope(client, tmp_path):
    uri = (tmp_path / "skip.arch").as_uri()
    client.open(uri, "input 8x8x3\nstem: conv3(8)\nskip: conv3(8) relu\nhead: gap\n")
    assert client.diagnostics(uri) == []
    client.change(uri, "input 8x8x3\nstem: conv3(8)\nskip: conv3(8) relu\nhead: add(@", 2)
    client.diagnostics(uri)      # half-typed: a parse error, answered from the last version that parsed
    items = client.at("textDocument/completion", uri, 3, 11)["items"]
    assert [i["label"] for i in items] == ["input", "stem", "skip"]
    names = {i["label"] for i in client.at("textDocument/completion", uri, 3, 7)["items"]}
    assert {"conv3", "residual", "inception", "relu"} <= names and "skip" not in names


def test_inlay_hints_give_each_stage_its_shape(client, files):
    uri = (files / "net.arch").as_uri()
    hints = client.request("textDocument/inlayHint", {"textDocument": {"uri": uri},
                                                      "range": {"start": {"line": 0, "character": 0},
                                                                "end": {"line": 9, "character": 0}}})
    assert [(h["position"]["line"], h["label"].strip()) for h in hints] == [(2, "8x8x8"), (3, "8x8x16"), (4, "10")]


def test_formatting_is_archc_fmt(client, tmp_path):
    from archc.spec.fmt import format_source
    uri = (tmp_path / "messy.arch").as_uri()
    text = "input 8x8x3   # the image\nstem:conv3( 8,s=2 )  relu\nhead:   gap fc( 10 )\n"
    client.open(uri, text)
    [edit] = client.request("textDocument/formatting", {"textDocument": {"uri": uri},
                                                        "options": {"tabSize": 4, "insertSpaces": True}})
    assert edit["newText"] == format_source(text) != text and "# the image" in edit["newText"]
    assert _range(edit["range"]) == (0, 0, 3, 0)
    client.change(uri, edit["newText"], 2)
    assert client.request("textDocument/formatting", {"textDocument": {"uri": uri},
                                                      "options": {"tabSize": 4, "insertSpaces": True}}) == []
