"""`archc graph`: the boxes, collapsed runs, shaped edges and resolution levels of the picture,
and its files."""
import functools
import subprocess
import sys
import xml.etree.ElementTree as ET

import tomllib

import pytest

from archc.compiler.library import LIBRARY
from archc.compiler.stats import summarize
from archc.graph import picture, to_dot, to_svg, trace


@functools.lru_cache(maxsize=None)
def _traced(name):
    return trace(name)


def _pic(name, **kw):
    return picture(*_traced(name), **kw)


def _box(pic, title):
    return next(b for b in pic.boxes if b.title == title)


def _into(pic, box):
    return [e for e in pic.edges if e.dst == box.id]


def test_resnet50_collapses_each_stage_and_shapes_every_edge():
    pic = _pic("resnet50")
    layer3 = _box(pic, "layer3.0–5")
    graph = _traced("resnet50")[0]
    assert layer3.what == "bottleneck ×6"
    assert layer3.params == sum(l["params"] for l in summarize(graph)["layers"] if l["name"].startswith("layer3."))
    [e] = _into(pic, layer3)
    assert e.shape == (28, 28, 512)
    assert [b.what for b in pic.boxes].count("bottleneck ×3") == 2
    reference = tomllib.loads((LIBRARY / "references" / "classic.toml").read_text())["resnet50"]
    assert sum(b.params for b in pic.boxes) == reference["trainable"] + reference["non_trainable"]
    expanded = _pic("resnet50", expand=("layer3",))
    assert [b.title for b in expanded.boxes if b.stage == "layer3"] == [f"layer3.{i}" for i in range(6)]
    assert 'subgraph "cluster_layer3"' in to_dot(expanded)


def test_unet_goes_down_and_back_up_with_its_skips():
    pic = _pic("unet")
    down = [_box(pic, n).level for n in ("enc1", "enc2", "enc3", "enc4", "bottom")]
    up = [_box(pic, n).level for n in ("dec4", "dec3", "dec2", "dec1")]
    assert down == [0, 1, 2, 3, 4] and up == [3, 2, 1, 0]
    skip = next(e for e in pic.edges if e.src == _box(pic, "enc4").id and e.dst == _box(pic, "dec4").id)
    assert skip.shape == (64, 64, 512)


def test_side_branches_and_several_outputs_are_boxes_of_their_own():
    pic = _pic("googlenet")
    assert {b.title for b in pic.boxes if b.output} == {"aux1", "aux2", "head"}
    aux1 = _box(pic, "aux1")
    assert aux1.row == 1 and _box(pic, "inception4b").row == 0      # off the main path
    assert sum(1 for b in _pic("ssd300_vgg16").boxes if b.output) == 12


def test_svg_is_well_formed_and_every_box_says_where_it_is_written():
    svg = ET.fromstring(to_svg(_pic("unet")))
    tips = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert len(tips) == 11 and any("archc/architectures/unet.arch:" in t for t in tips)


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<svg"), (".html", b"<!doctype html>")])
def test_command_writes_each_format(tmp_path, suffix, magic):
    out = tmp_path / f"lenet{suffix}"
    r = subprocess.run([sys.executable, "-m", "archc.cli", "graph", "lenet5", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(magic)


def test_command_refuses_an_unknown_format(tmp_path):
    r = subprocess.run([sys.executable, "-m", "archc.cli", "graph", "lenet5", "-o", str(tmp_path / "x.jpg")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "error: cannot write" in r.stderr and "Traceback" not in r.stderr


# --- readable at a page's width (issue 27): top to bottom, long chains wrapped, names whole ------
def _rects(shapes):
    return [s.args for s in shapes if s.kind == "rect" and s.tip]


def _crosses(seg, rect, inset=2.0):
    """Whether an axis-parallel segment passes through the inside of a rectangle."""
    (x0, y0), (x1, y1) = seg
    rx, ry, rw, rh = rect
    lo_x, hi_x, lo_y, hi_y = rx + inset, rx + rw - inset, ry + inset, ry + rh - inset
    return max(x0, x1) > lo_x and min(x0, x1) < hi_x and max(y0, y1) > lo_y and min(y0, y1) < hi_y


@pytest.mark.parametrize("name,depth", [("googlenet", 2), ("googlenet", 3), ("nasnetalarge", 2), ("resnet50", 2),
                                        ("densenet121", 2), ("unet", 2), ("ssd300_vgg16", 2)])
def test_pictures_fit_a_page_keep_names_whole_and_route_lines_around_boxes(name, depth):
    from archc.graph.render import box_width, layout
    pic = _pic(name, depth=depth)
    shapes, w, h = layout(pic)
    assert w <= 1750, (w, h)          # a page (~1600 px) shows the PNG (x1.5) with text >= 11 px
    if depth == 2:                     # the docs pictures: page-shaped, not strips
        assert 0.5 <= w / h <= 2.5, (w, h)
    texts = {s.args[2] for s in shapes if s.kind == "text"}
    assert all(b.title in texts and b.what in texts for b in pic.boxes)        # whole, never clipped
    assert not any("…" in t for t in texts)
    rects = _rects(shapes)
    assert len(rects) == len(pic.boxes)
    for b, (x, y, bw, bh) in zip(pic.boxes, rects):
        assert bw >= box_width(b)
    for i, (ax, ay, aw, ah) in enumerate(rects):      # boxes never overlap
        for cx, cy, cw, ch in rects[i + 1:]:
            assert not (ax < cx + cw and cx < ax + aw and ay < cy + ch and cy < ay + ah)
    by_id = dict(zip((b.id for b in pic.boxes), rects))
    paths = [s for s in shapes if s.kind in ("line", "curve")]          # one per edge, in order
    assert len(paths) == len(pic.edges)
    lines = [(e, s) for e, s in zip(pic.edges, paths) if s.kind == "line"]
    for e, s in lines:                       # lanes and wrapped edges pass boxes by
        others = [r for i, r in by_id.items() if i not in (e.src, e.dst)]
        for seg in zip(s.args, s.args[1:]):
            assert not any(_crosses(seg, r) for r in others), (name, e, seg)
    assert name not in ("nasnetalarge", "googlenet") or lines           # these wrap, and route around


def test_command_draws_googlenet_to_fit_a_page_with_whole_names(tmp_path):
    """As the user ran it (issue 27): `archc graph googlenet` was a 7182x1179 staircase and
    `--depth 3` cut names; now the PNG fits a page's width (x1.5 scale) and every name is whole."""
    from PIL import Image
    png, svg = tmp_path / "g.png", tmp_path / "g3.svg"
    for args in (("googlenet", "-o", png), ("googlenet", "--depth", "3", "-o", svg)):
        r = subprocess.run([sys.executable, "-m", "archc", "graph", *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    w, h = Image.open(png).size
    assert w <= 1750 * 1.5 and 0.5 <= w / h <= 2.5, (w, h)
    texts = {t.text for t in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}text")}
    titles = {b.title for b in _pic("googlenet", depth=3).boxes}
    assert "inception4e.branch2.basic2" in titles and titles <= texts and not any("…" in t for t in texts)
