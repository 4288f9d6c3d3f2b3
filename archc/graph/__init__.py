"""`archc graph`: a picture of a network, one box per block instance (model.py), drawn by our
own layered layout (render.py) to SVG, PNG, HTML or DOT with no system package."""
from __future__ import annotations

from pathlib import Path

from .model import Picture, picture, trace  # noqa: F401  (the API)
from .render import to_dot, to_html, to_png, to_svg

FORMATS = (".svg", ".png", ".html", ".dot")


def draw(spec: str, out: str | None, depth: int = 2, expand: tuple = (), params: dict | None = None,
         input_shape: tuple | None = None) -> str:
    """Write the picture to `out` (its suffix picks the format; None: DOT on stdout). Returns
    what was written, for the command line to say."""
    graph, units = trace(spec, params, input_shape)
    pic = picture(graph, units, depth, tuple(expand))
    if out is None:
        print(to_dot(pic), end="")
        return ""
    suffix = Path(out).suffix.lower()
    if suffix == ".png":
        to_png(pic, out)
    else:
        Path(out).write_text({".svg": to_svg, ".html": to_html, ".dot": to_dot}[suffix](pic), encoding="utf-8")
    return f"{out}: {len(pic.boxes)} boxes, {len(pic.edges)} edges"
