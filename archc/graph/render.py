"""Drawing a Picture: one layout as a list of shapes, written as SVG, as PNG (matplotlib, already
a dependency: no system package), inside an HTML page (pan, zoom, hover), or as Graphviz DOT."""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

from ..compiler.ops import fmt
from .model import Box, Picture

W, H = 184, 62          # a box: its least width (a long name widens it), its height
GAP_X, GAP_Y = 40, 46   # between the boxes of a rank; between ranks (room for the edge labels)
GUTTER = 48             # between wrapped columns, plus a lane per edge that wraps into a column
LANE = 9                # between the lanes of edges that pass boxes by, or wrap
PAD = 24
ASPECT = 1.5            # the width : height a wrapped picture aims at (a page, not a strip) …
MAX_WIDTH = 1750        # … no wider than this where it can be: a page (~1600 px) shows the PNG (x1.5) at 11 px text
STAGE_FILL = "#f3f6fb"
COLORS = {"box": "#ffffff", "line": "#44546a", "output": "#c0392b", "edge": "#7f8c9d", "text": "#1d2733",
          "muted": "#5d6d7e"}


@dataclass
class Shape:
    kind: str            # 'rect', 'text', 'curve' (a cubic Bézier: 4 points), 'line' (a polyline)
    args: tuple
    style: dict
    tip: str | None = None


def _params(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M params"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k params"
    return f"{n} params" if n else "no params"


def _footer(b: Box) -> str:
    return _params(b.params) + (f" · out {fmt(b.shape)}" if b.output else "")


def box_width(b: Box) -> float:
    """Wide enough for its whole name, contents and footer (DejaVu Sans: ~0.62 em a character)."""
    return max(W, 0.64 * 12 * len(b.title) + 20, 0.62 * 11 * len(b.what) + 20, 0.62 * 10 * len(_footer(b)) + 20)


# ---- layout: top to bottom by rank, long chains wrapped into columns (as Netron reads) ----------
@dataclass
class _Frame:
    """Where things go: each box's (x, y) and width, the columns' ranks and x, the margins."""
    pos: dict
    width: dict
    column_of: dict           # rank -> column
    columns: list             # [(first rank, last rank)]
    col_x: list
    col_w: list
    top: float                # y of the first rank
    bottom: float             # y under the tallest column
    lanes: dict               # column -> lanes used to its right


def _u_shaped(pic: Picture) -> bool:
    """The resolution comes back up (a decoder): then a box's level is its column, so a U-Net
    goes down-right, comes back down-left, and its skips drop straight down."""
    return any(len(e.shape) == 3 and len(pic.boxes[e.dst].shape) == 3
               and pic.boxes[e.dst].level < e.level for e in pic.edges)


def _offsets(pic: Picture, widths: dict) -> dict:
    """Each box's x within its column: side by side within its rank (the main path first), or,
    for a U shape, in the band of its resolution level."""
    u_shaped = _u_shaped(pic)
    by_rank: dict = {}
    for b in sorted(pic.boxes, key=lambda b: (b.rank, b.level, b.row, b.id) if u_shaped else (b.rank, b.row, b.id)):
        by_rank.setdefault(b.rank, []).append(b)
    off = {}
    if not u_shaped:
        ins: dict = {}
        for e in pic.edges:
            ins.setdefault(e.dst, []).append(e.src)
        for boxes in by_rank.values():
            # under the boxes they read where there is room (branches stay straight), in that order
            # (a merge under the leftmost of its inputs, so that a chain does not drift right)
            under = {b.id: min((off[i] for i in ins.get(b.id, [])), default=0.0) for b in boxes}
            x = 0.0
            for b in sorted(boxes, key=lambda b: (under[b.id], b.row, b.id)):
                off[b.id] = max(x, under[b.id])
                x = off[b.id] + widths[b.id] + GAP_X
        return off
    band: dict = {}               # level -> its width: the widest rank's boxes at that level
    for boxes in by_rank.values():
        for level in {b.level for b in boxes}:
            at = [widths[b.id] for b in boxes if b.level == level]
            band[level] = max(band.get(level, 0), sum(at) + GAP_X * (len(at) - 1))
    start, x = {}, 0.0
    for level in sorted(band):
        start[level], x = x, x + band[level] + GAP_X
    for boxes in by_rank.values():
        used: dict = {}
        for b in boxes:
            off[b.id] = start[b.level] + used.get(b.level, 0)
            used[b.level] = used.get(b.level, 0) + widths[b.id] + GAP_X
    return off


def _wrap(n_ranks: int, rank_w: list, wrap: bool) -> list:
    """Split the ranks into columns of equal height whose picture is closest to ASPECT among those
    no wider than MAX_WIDTH (a taller picture scrolls; a wider one shrinks its text)."""
    best = None
    for c in range(1, (n_ranks if wrap else 1) + 1):
        per = -(-n_ranks // c)
        cols = [(i, min(i + per, n_ranks) - 1) for i in range(0, n_ranks, per)]
        width = sum(max(rank_w[a:b + 1]) for a, b in cols) + GUTTER * (len(cols) - 1)
        height = per * (H + GAP_Y)
        score = (width > MAX_WIDTH, abs(math.log(width / height / ASPECT)))
        if best is None or score < best[0]:
            best = (score, cols)
    return best[1]


def _frame(pic: Picture) -> _Frame:
    widths = {b.id: box_width(b) for b in pic.boxes}
    off = _offsets(pic, widths)
    n = max(b.rank for b in pic.boxes) + 1
    rank_w = [0.0] * n
    for b in pic.boxes:
        rank_w[b.rank] = max(rank_w[b.rank], off[b.id] + widths[b.id])
    columns = _wrap(n, rank_w, wrap=not _u_shaped(pic))
    column_of = {r: i for i, (a, z) in enumerate(columns) for r in range(a, z + 1)}
    return _Frame({b.id: (off[b.id], 0.0) for b in pic.boxes}, widths, column_of, columns, [], [],
                  0.0, 0.0, {})


def _blocked(fr: _Frame, pic: Picture, a: Box, b: Box, ranks) -> bool:
    """Whether a box of `ranks` (in a's column) stands in the way of a vertical run from a to b."""
    xa = fr.pos[a.id][0] + fr.width[a.id] / 2
    xb = fr.pos[b.id][0] + fr.width[b.id] / 2
    lo, hi = min(xa, xb) - 6, max(xa, xb) + 6
    return any(c.rank in ranks and fr.column_of[c.rank] == fr.column_of[a.rank]
               and fr.pos[c.id][0] < hi and lo < fr.pos[c.id][0] + fr.width[c.id] for c in pic.boxes)


def _route(pic: Picture, fr: _Frame) -> list:
    """Each edge's kind: 'near' (a curve down to the next boxes), 'lane' (down a lane at the
    column's right, past the boxes between) or 'wrap' (on into a later column); lanes given out
    so that runs side by side do not share one."""
    routes = []
    busy: dict = {}           # column -> [last rank each lane is taken to]
    for e in pic.edges:
        a, b = pic.boxes[e.src], pic.boxes[e.dst]
        ca, cb = fr.column_of[a.rank], fr.column_of[b.rank]
        if ca == cb:
            between = range(a.rank + 1, b.rank)
            kind, span = ("lane", (a.rank, b.rank)) if _blocked(fr, pic, a, b, between) else ("near", None)
        else:
            last = fr.columns[ca][1]
            kind = "wrap"
            span = (a.rank, last) if _blocked(fr, pic, a, a, range(a.rank + 1, last + 1)) else None
        lane = None
        if span is not None:
            ends = busy.setdefault(ca, [])
            lane = next((i for i, end in enumerate(ends) if end < span[0]), len(ends))
            if lane == len(ends):
                ends.append(span[1])
            ends[lane] = span[1]
        routes.append((e, kind, lane))
    fr.lanes = {c: len(v) for c, v in busy.items()}
    return routes


def layout(pic: Picture) -> tuple[list, float, float]:
    """The shapes of the picture, and its width and height in pixels."""
    fr = _frame(pic)
    routes = _route(pic, fr)
    wraps_into: dict = {}
    for e, kind, _ in routes:
        if kind == "wrap":
            wraps_into.setdefault(fr.column_of[pic.boxes[e.dst].rank], []).append(e)
    n_wrap = max((len(v) for v in wraps_into.values()), default=0)
    fr.top = PAD + 30 + (14 + LANE * n_wrap if n_wrap else 0)
    x = PAD
    for i, (a, z) in enumerate(fr.columns):
        if i:
            x += GUTTER + LANE * len(wraps_into.get(i, []))
        content = max(fr.pos[b.id][0] + fr.width[b.id] for b in pic.boxes if a <= b.rank <= z)
        fr.col_x.append(x)
        fr.col_w.append(content + (12 + LANE * fr.lanes[i] if fr.lanes.get(i) else 0))
        x += fr.col_w[-1]
    for b in pic.boxes:
        c = fr.column_of[b.rank]
        fr.pos[b.id] = (fr.col_x[c] + fr.pos[b.id][0], fr.top + (b.rank - fr.columns[c][0]) * (H + GAP_Y))
    per = max(z - a + 1 for a, z in fr.columns)
    fr.bottom = fr.top + per * (H + GAP_Y) - GAP_Y
    width = x + PAD
    height = fr.bottom + (14 + LANE * n_wrap if n_wrap else 0) + PAD
    shapes: list = _clusters(pic, fr)
    order = {id(e): k for v in wraps_into.values() for k, e in enumerate(v)}
    fans: dict = {}            # a tensor read by several boxes: labelled once, under its box
    for e in pic.edges:
        fans[(e.src, e.shape)] = fans.get((e.src, e.shape), 0) + 1
    labels: dict = {}
    for e, kind, lane in routes:
        shapes.append(_edge(pic, fr, e, kind, lane, order.get(id(e), 0), labels, fans[(e.src, e.shape)] > 1))
    shapes += [part for label in labels.values() for part in label]     # over every line
    for b in pic.boxes:
        shapes += _box(b, *fr.pos[b.id], fr.width[b.id])
    return shapes, width, height


def _clusters(pic: Picture, fr: _Frame) -> list:
    """A stage of several boxes is a shaded cluster: one per column it spans, named once."""
    shapes = []
    for stage, ids in pic.stages.items():
        if len(ids) < 2:
            continue
        parts: dict = {}
        for i in ids:
            parts.setdefault(fr.column_of[pic.boxes[i].rank], []).append(i)
        for k, part in enumerate(parts.values()):
            x0 = min(fr.pos[i][0] for i in part) - 10
            y0 = min(fr.pos[i][1] for i in part) - 20
            x1 = max(fr.pos[i][0] + fr.width[i] for i in part) + 10
            y1 = max(fr.pos[i][1] for i in part) + H + 10
            shapes.append(Shape("rect", (x0, y0, x1 - x0, y1 - y0), {"fill": STAGE_FILL, "stroke": "#c9d3e0", "rx": 10}))
            if k == 0:
                shapes.append(Shape("text", (x0 + 8, y0 + 13, stage), {"size": 11, "color": COLORS["muted"], "weight": "bold"}))
    return shapes


def _edge(pic: Picture, fr: _Frame, e, kind: str, lane, k: int, labels: dict, fan: bool) -> Shape:
    """The edge's line; its shape label goes into `labels` (one per place and text)."""
    a, b = pic.boxes[e.src], pic.boxes[e.dst]
    (ax, ay), (bx, by) = fr.pos[a.id], fr.pos[b.id]
    sx, sy = ax + fr.width[a.id] / 2, ay + H
    ex, ey = bx + fr.width[b.id] / 2, by
    style = {"stroke": COLORS["edge"], "width": 1.4}
    ca = fr.column_of[a.rank]
    lane_x = fr.col_x[ca] + fr.col_w[ca] - 6 - LANE * (fr.lanes.get(ca, 1) - 1 - (lane or 0)) if lane is not None else None
    if kind == "near":
        dy = max(18.0, (ey - sy) / 2)
        pts = ((sx, sy), (sx, sy + dy), (ex, ey - dy), (ex, ey))
        at = ((sx + ex) / 2, (sy + ey) / 2)
        shape = Shape("curve", pts, style)
    elif kind == "lane":
        # along the gaps between ranks (never through a box) to the lane, down it, and back
        below, above = sy + GAP_Y * 0.3, ey - GAP_Y * 0.3
        pts = ((sx, sy), (sx, below), (lane_x, below), (lane_x, above), (ex, above), (ex, ey))
        at = (lane_x, (below + above) / 2)
        shape = Shape("line", pts, style)
    else:
        # under every column, up the gutter before b's column, and in over b in the gap above it
        low, high = fr.bottom + 14 + LANE * k, ey - 14 - LANE * k
        gutter = fr.col_x[fr.column_of[b.rank]] - GUTTER / 2 - LANE * k
        if lane_x is not None:          # boxes below it in its column: leave by a lane
            below = sy + GAP_Y * 0.3
            start = [(sx, sy), (sx, below), (lane_x, below), (lane_x, low)]
            at = (lane_x, (below + low) / 2)
        else:
            start = [(sx, sy), (sx, low)]
            at = (sx, sy + GAP_Y / 2)
        pts = tuple(start + [(gutter, low), (gutter, high), (ex, high), (ex, ey)])
        shape = Shape("line", pts, style)
    label = fmt(e.shape)
    if fan:
        at = (sx, sy + 15)
    mx, my = at
    labels[(round(mx), round(my), label)] = [
        Shape("rect", (mx - 3.2 * len(label) - 4, my - 8, 6.4 * len(label) + 8, 15),
              {"fill": "#ffffff", "stroke": "none", "rx": 3, "opacity": 0.9}),
        Shape("text", (mx, my + 4, label), {"size": 10.5, "color": COLORS["muted"], "anchor": "middle", "mono": True})]
    return shape


def _box(b: Box, x: float, y: float, w: float = W) -> list:
    where = f"{b.span.file}:{b.span.line}:{b.span.col}" if b.span else ""
    tip = f"{b.title}: {b.what}\noutput {fmt(b.shape)}\n{b.params:,} params\n{where}"
    stroke = COLORS["output"] if b.output else COLORS["line"]
    return [Shape("rect", (x, y, w, H), {"fill": COLORS["box"], "stroke": stroke, "rx": 6,
                                         "width": 2.2 if b.output else 1.2}, tip),
            Shape("text", (x + w / 2, y + 17, b.title), {"size": 12, "weight": "bold", "anchor": "middle",
                                                         "color": COLORS["text"]}),
            Shape("text", (x + w / 2, y + 33, b.what), {"size": 11, "anchor": "middle", "color": COLORS["text"]}),
            Shape("text", (x + w / 2, y + 49, _footer(b)),
                  {"size": 10, "anchor": "middle", "color": stroke if b.output else COLORS["muted"]})]


# ---- writers ----
def to_svg(pic: Picture) -> str:
    shapes, w, h = layout(pic)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" '
           f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           f'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{COLORS["edge"]}"/></marker></defs>',
           f'<rect width="100%" height="100%" fill="#ffffff"/>',
           f'<text x="{PAD}" y="{PAD}" font-size="15" font-weight="bold" fill="{COLORS["text"]}">{html.escape(pic.name)}</text>']
    for s in shapes:
        st = s.style
        if s.kind == "rect":
            x, y, rw, rh = s.args
            el = (f'<rect x="{x:.1f}" y="{y:.1f}" width="{rw:.1f}" height="{rh:.1f}" rx="{st.get("rx", 0)}" '
                  f'fill="{st["fill"]}" stroke="{st["stroke"]}" stroke-width="{st.get("width", 1)}" '
                  f'fill-opacity="{st.get("opacity", 1)}"/>')
            if s.tip:
                el = f'<g class="box"><title>{html.escape(s.tip)}</title>{el}</g>'
            out.append(el)
        elif s.kind == "text":
            x, y, text = s.args
            out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{st["size"]}" fill="{st["color"]}" '
                       f'text-anchor="{st.get("anchor", "start")}" font-weight="{st.get("weight", "normal")}"'
                       + (' font-family="DejaVu Sans Mono, monospace"' if st.get("mono") else "")
                       + f' pointer-events="none">{html.escape(text)}</text>')
        else:
            (x0, y0), *rest = s.args
            op = "C" if s.kind == "curve" else "L"
            d = f"M{x0:.1f},{y0:.1f} {op}" + " ".join(f"{x:.1f},{y:.1f}" for x, y in rest)
            out.append(f'<path d="{d}" fill="none" stroke="{st["stroke"]}" stroke-width="{st["width"]}" '
                       'marker-end="url(#arrow)"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_png(pic: Picture, path: str, scale: float = 1.5) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    from matplotlib.path import Path as MPath

    shapes, w, h = layout(pic)
    dpi = 100 * scale
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    pt = 0.72            # points per pixel at 100 dpi
    ax.text(PAD, PAD, pic.name, fontsize=15 * pt, fontweight="bold", color=COLORS["text"], va="baseline")
    for s in shapes:
        st = s.style
        if s.kind == "rect":
            x, y, rw, rh = s.args
            ax.add_patch(FancyBboxPatch((x, y), rw, rh, boxstyle=f"round,pad=0,rounding_size={st.get('rx', 0)}",
                                        facecolor=st["fill"], alpha=st.get("opacity", 1),
                                        edgecolor="none" if st["stroke"] == "none" else st["stroke"],
                                        linewidth=st.get("width", 1) * pt))
        elif s.kind == "text":
            x, y, text = s.args
            ax.text(x, y, text, fontsize=st["size"] * pt, color=st["color"], va="baseline",
                    ha={"middle": "center"}.get(st.get("anchor"), "left"), fontweight=st.get("weight", "normal"),
                    family="monospace" if st.get("mono") else "sans-serif")
        else:
            step = MPath.CURVE4 if s.kind == "curve" else MPath.LINETO
            curve = MPath(s.args, [MPath.MOVETO] + [step] * (len(s.args) - 1))
            ax.add_patch(FancyArrowPatch(path=curve, arrowstyle="-|>,head_length=5,head_width=2.5",
                                         color=st["stroke"], linewidth=st["width"] * pt, mutation_scale=1))
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
 html, body {{ margin: 0; height: 100%; font-family: sans-serif; }}
 #view {{ width: 100%; height: 100%; overflow: hidden; cursor: grab; }}
 #view svg {{ width: 100%; height: 100%; }}
 .box:hover rect {{ stroke: #2e86de; stroke-width: 2.5; }}
 #help {{ position: fixed; right: 10px; top: 8px; color: #5d6d7e; font-size: 12px; }}
</style></head><body>
<div id="help">wheel: zoom · drag: pan · hover a box: shape, params, source · {hint}</div>
<div id="view">{svg}</div>
<script>
const svg = document.querySelector('#view svg');
let [x, y, w, h] = svg.getAttribute('viewBox').split(' ').map(Number);
const set = () => svg.setAttribute('viewBox', `${{x}} ${{y}} ${{w}} ${{h}}`);
svg.addEventListener('wheel', e => {{
  e.preventDefault();
  const r = svg.getBoundingClientRect(), k = e.deltaY > 0 ? 1.15 : 1 / 1.15;
  const px = x + (e.clientX - r.left) / r.width * w, py = y + (e.clientY - r.top) / r.height * h;
  x = px - (px - x) * k; y = py - (py - y) * k; w *= k; h *= k; set();
}}, {{passive: false}});
let drag = null;
svg.addEventListener('mousedown', e => drag = [e.clientX, e.clientY]);
window.addEventListener('mouseup', () => drag = null);
window.addEventListener('mousemove', e => {{
  if (!drag) return;
  const r = svg.getBoundingClientRect();
  x -= (e.clientX - drag[0]) / r.width * w; y -= (e.clientY - drag[1]) / r.height * h;
  drag = [e.clientX, e.clientY]; set();
}});
</script></body></html>
"""


def to_html(pic: Picture) -> str:
    collapsed = sorted({b.expandable for b in pic.boxes if b.expandable})
    hint = f"expand with --expand {' '.join(collapsed)}" if collapsed else ""
    svg = to_svg(pic).replace('width="', 'data-width="', 1).replace('height="', 'data-height="', 1)
    return _PAGE.format(title=html.escape(pic.name), svg=svg, hint=html.escape(hint))


def to_dot(pic: Picture) -> str:
    q = lambda s: '"' + str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'   # noqa: E731
    out = [f"digraph {q(pic.name)} {{", "  rankdir=TB; node [shape=box, style=rounded, fontname=Helvetica];",
           "  edge [fontname=Helvetica, fontsize=10];"]
    for stage, ids in pic.stages.items():
        inner = [f"    b{i} [label={q(_dot_label(pic.boxes[i]))}{', color=red' if pic.boxes[i].output else ''}];"
                 for i in ids]
        if len(ids) > 1:
            out += [f"  subgraph {q('cluster_' + stage)} {{", f"    label={q(stage)};"] + inner + ["  }"]
        else:
            out += [x[2:] for x in inner]
    out += [f"  b{e.src} -> b{e.dst} [label={q(fmt(e.shape))}];" for e in pic.edges]
    out.append("}")
    return "\n".join(out) + "\n"


def _dot_label(b: Box) -> str:
    return f"{b.title}\n{b.what}\n{_params(b.params)}" + (f"\nout {fmt(b.shape)}" if b.output else "")
