"""Pictures and an HTML report a person can look at: contact sheets of views, metric tables.

Everything is written atomically; images are embedded in the HTML so a report is one file.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from . import images
from .atomic import atomic_path


def normals_to_rgb(normal: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) unit normals -> (H, W, 3) uint8 with rgb = (n + 1) / 2 and a white background."""
    rgb = ((normal + 1) * 0.5 * 255).clip(0, 255).astype(np.uint8)
    if mask is None:
        mask = np.linalg.norm(normal, axis=-1) > 0.5
    rgb[~mask] = 255
    return rgb


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Gray (H, W) or RGB (H, W, 3) image, float in [0, 1] or uint8 -> (H, W, 3) uint8."""
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3]


def contact_sheet(images: Sequence[np.ndarray], columns: int = 6, pad: int = 2) -> np.ndarray:
    """Tile same-size images (each gray or RGB) into one (rows*H, columns*W, 3) uint8 picture."""
    tiles = [to_uint8_rgb(im) for im in images]
    h, w = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = tile
    return sheet


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an image atomically as PNG."""
    with atomic_path(path) as tmp:
        images.write_png(tmp, to_uint8_rgb(image) if image.dtype != np.uint16 else image)


def _png_data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    iio.imwrite(buffer, to_uint8_rgb(image), extension=".png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def metrics_table_html(rows: dict[str, float | str]) -> str:
    """A two-column HTML table from a flat name -> value mapping."""
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                    for k, v in rows.items())
    return f"<table>{cells}</table>"


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_html_report(path: str | Path, title: str,
                      sections: Sequence[tuple[str, str | np.ndarray]]) -> None:
    """Write a self-contained HTML page: each section is (heading, HTML snippet or image array)."""
    body = []
    for heading, content in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, np.ndarray):
            body.append(f'<img src="{_png_data_uri(content)}" alt="{html.escape(heading)}">')
        else:
            body.append(content)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} img{{max-width:100%;image-rendering:pixelated}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}
pre{{background:#f6f6f6;padding:8px}}</style></head>
<body><h1>{html.escape(title)}</h1>
{''.join(body)}
</body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)


# ------------------------------------------------------------------------------------ loss curves
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_NOT_LOSSES = ("iter", "time")


def loss_curves_svg(log: list[dict[str, float]], width: int = 720, height: int = 400) -> str:
    """An SVG line chart of every loss in a run's log (one polyline per loss, x = iteration).

    The y axis is logarithmic when every plotted value is positive, linear otherwise; non-finite
    values are skipped. An empty log gives axes-free "no losses logged" text.
    """
    log = [row for row in log if "event" not in row]  # recovery events are not values
    keys = [k for k in dict.fromkeys(k for row in log for k in row) if k not in _NOT_LOSSES]
    series = {}
    for key in keys:
        points = [(float(row["iter"]), float(row[key])) for row in log
                  if key in row and "iter" in row and _finite(row[key])]
        if points:
            series[key] = points
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">'
            f'<rect width="{width}" height="{height}" fill="white"/>')
    if not series:
        return head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no losses logged</text></svg>\n'
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    log_y = min(ys) > 0
    fy = math.log10 if log_y else (lambda v: v)
    x0, x1 = _span(min(xs), max(xs))
    y0, y1 = _span(fy(min(ys)), fy(max(ys)))
    left, right, top, bottom = 70, 20, 20, 45
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (fy(y) - y0) / (y1 - y0)) * ph

    parts = [head, f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
    for x in _ticks(x0, x1):
        parts.append(f'<line x1="{px(x):.1f}" y1="{top + ph}" x2="{px(x):.1f}" y2="{top + ph + 5}" stroke="#444"/>'
                     f'<text x="{px(x):.1f}" y="{top + ph + 18}" text-anchor="middle">{_label(x)}</text>')
    y_ticks = _ticks(y0, y1)
    if log_y:  # decades, or finer exponents when the curves span less than two decades
        decades = _ticks(y0, y1, integers=True)
        y_ticks = [10.0 ** e for e in (decades if len(decades) >= 2 else y_ticks)]
    for y in y_ticks:
        parts.append(f'<line x1="{left - 5}" y1="{py(y):.1f}" x2="{left + pw}" y2="{py(y):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 8}" y="{py(y) + 4:.1f}" text-anchor="end">{_label(y)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">iteration</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {top + ph / 2})">loss{" (log scale)" if log_y else ""}</text>')
    for k, (key, points) in enumerate(series.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}">'
                     f'<title>{html.escape(key)}</title></polyline>')
        ly = top + 14 + 16 * k
        parts.append(f'<line x1="{left + pw - 120}" y1="{ly - 4}" x2="{left + pw - 100}" y2="{ly - 4}" '
                     f'stroke="{colour}" stroke-width="2"/>'
                     f'<text x="{left + pw - 95}" y="{ly}">{html.escape(key)}</text>')
    parts.append("</svg>\n")
    return "".join(parts)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _span(lo: float, hi: float) -> tuple[float, float]:
    """A non-empty plotting range containing [lo, hi]."""
    if hi - lo < 1e-12 * max(1.0, abs(lo)):
        return lo - 0.5, hi + 0.5
    return lo, hi


def _ticks(lo: float, hi: float, integers: bool = False, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 x 10^k steps; whole numbers when `integers`) in [lo, hi]."""
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    if integers:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [i * step for i in range(first, last + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if value != 0 else "0"
