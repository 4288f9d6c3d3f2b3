"""Drawing a Picture: one layout as a list of shapes, written as SVG, as PNG (matplotlib, already
a dependency: no system package), inside an HTML page (pan, zoom, hover), or as Graphviz DOT."""
from __future__ import annotations

import html
from dataclasses import dataclass

from ..compiler.ops import fmt
from .model import Box, Picture

W, H = 184, 62          # a box
GAP_X, GAP_Y = 84, 34   # room for the edge labels between ranks, and between rows
PAD = 24
STAGE_FILL = "#f3f6fb"
COLORS = {"box": "#ffffff", "line": "#44546a", "output": "#c0392b", "edge": "#7f8c9d", "text": "#1d2733",
          "muted": "#5d6d7e"}


@dataclass
class Shape:
    kind: str            # 'rect', 'text', 'path'
    args: tuple
    style: dict
    tip: str | None = None


def _params(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f}M params"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k params"
    return f"{n} params" if n else "no params"


def layout(pic: Picture) -> tuple[list, float, float]:
    """The shapes of the picture, and its width and height in pixels."""
    rows = {}
    for b in pic.boxes:
        rows[b.level] = max(rows.get(b.level, 0), b.row + 1)
    top, y = {}, PAD + 18
    for level in sorted(rows):
        top[level] = y
        y += rows[level] * (H + GAP_Y) + 8
    pos = {b.id: (PAD + b.rank * (W + GAP_X), top[b.level] + b.row * (H + GAP_Y)) for b in pic.boxes}
    width = PAD * 2 + (max(b.rank for b in pic.boxes) + 1) * (W + GAP_X) - GAP_X
    height = y + PAD
    shapes: list = []
    for stage, ids in pic.stages.items():          # clusters first: under everything
        if len(ids) > 1:
            xs = [pos[i][0] for i in ids]
            ys = [pos[i][1] for i in ids]
            x0, y0 = min(xs) - 10, min(ys) - 20
            shapes.append(Shape("rect", (x0, y0, max(xs) + W + 10 - x0, max(ys) + H + 10 - y0),
                                {"fill": STAGE_FILL, "stroke": "#c9d3e0", "rx": 10}))
            shapes.append(Shape("text", (x0 + 8, y0 + 13, stage), {"size": 11, "color": COLORS["muted"], "weight": "bold"}))
    occupied = {(b.rank, b.level, b.row) for b in pic.boxes}
    for e in pic.edges:
        shapes += _edge(pic.boxes[e.src], pic.boxes[e.dst], pos, e.shape, occupied)
    for b in pic.boxes:
        shapes += _box(b, *pos[b.id])
    return shapes, width, height


def _edge(a: Box, b: Box, pos: dict, shape: tuple, occupied: set) -> list:
    (ax, ay), (bx, by) = pos[a.id], pos[b.id]
    sx, sy, ex, ey = ax + W, ay + H / 2, bx, by + H / 2
    blocked = any((r, a.level, a.row) in occupied for r in range(a.rank + 1, b.rank)) and ay == by
    lift = (H / 2 + 14 + 6 * (b.rank - a.rank)) if blocked else 0     # over the boxes between, not through them
    dx = max(30.0, (ex - sx) / 2)
    pts = ((sx, sy), (sx + dx, sy - lift), (ex - dx, ey - lift), (ex, ey))
    if b.rank - a.rank > 1 and ey > sy:
        # a long edge down the staircase: drop at once and run in at the destination's height,
        # under the boxes of the ranks between
        pts = ((sx, sy), (sx + 40, ey), (ex - dx, ey), (ex, ey))
    mx = (pts[0][0] + 3 * pts[1][0] + 3 * pts[2][0] + pts[3][0]) / 8
    my = (pts[0][1] + 3 * pts[1][1] + 3 * pts[2][1] + pts[3][1]) / 8
    label = fmt(shape)
    return [Shape("path", pts, {"stroke": COLORS["edge"], "width": 1.4}),
            Shape("rect", (mx - 3.4 * len(label) - 4, my - 8, 6.8 * len(label) + 8, 15),
                  {"fill": "#ffffff", "stroke": "none", "rx": 3, "opacity": 0.9}),
            Shape("text", (mx, my + 4, label), {"size": 10.5, "color": COLORS["muted"], "anchor": "middle", "mono": True})]


def _box(b: Box, x: float, y: float) -> list:
    where = f"{b.span.file}:{b.span.line}:{b.span.col}" if b.span else ""
    tip = f"{b.title}: {b.what}\noutput {fmt(b.shape)}\n{b.params:,} params\n{where}"
    stroke = COLORS["output"] if b.output else COLORS["line"]
    out = [Shape("rect", (x, y, W, H), {"fill": COLORS["box"], "stroke": stroke, "rx": 6,
                                        "width": 2.2 if b.output else 1.2}, tip),
           Shape("text", (x + W / 2, y + 17, _clip(b.title, 24)), {"size": 12, "weight": "bold", "anchor": "middle",
                                                                   "color": COLORS["text"]}),
           Shape("text", (x + W / 2, y + 33, _clip(b.what, 27)), {"size": 11, "anchor": "middle", "color": COLORS["text"]}),
           Shape("text", (x + W / 2, y + 49, _params(b.params) + (f" · out {fmt(b.shape)}" if b.output else "")),
                 {"size": 10, "anchor": "middle", "color": stroke if b.output else COLORS["muted"]})]
    return out


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 1] + "…"


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
            (x0, y0), (x1, y1), (x2, y2), (x3, y3) = s.args
            out.append(f'<path d="M{x0:.1f},{y0:.1f} C{x1:.1f},{y1:.1f} {x2:.1f},{y2:.1f} {x3:.1f},{y3:.1f}" '
                       f'fill="none" stroke="{st["stroke"]}" stroke-width="{st["width"]}" marker-end="url(#arrow)"/>')
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
            curve = MPath(s.args, [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4])
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
    out = [f"digraph {q(pic.name)} {{", "  rankdir=LR; node [shape=box, style=rounded, fontname=Helvetica];",
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
