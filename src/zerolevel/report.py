"""Pictures and an HTML report a person can look at: contact sheets of views, metric tables.

Everything is written atomically; images are embedded in the HTML so a report is one file.
"""

from __future__ import annotations

import base64
import html
import io
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
