"""The report of a fit: one HTML page with images beside it, readable offline.

`write_fit_report` writes `OUT/report.html` and, under `OUT/report/`, `normals.png` (input normal
maps of a few views above the fitted result's rendered normals), `losses.svg` (the loss curves of
the run's log, drawn here as plain SVG: no plotting library needed) and, when given, `silhouettes.png`
(input masks against the result's, with the IoU of every view) and `turntable.gif` (the result
turning about the cameras' up axis). The page references the images by relative paths, so the output
folder can be moved or archived whole. Every file is written atomically.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import trimesh

from ..atomic import atomic_path
from ..cameras import Cameras
from ..optim.loop import read_log
from ..report import (contact_sheet, loss_curves_svg, metrics_table_html, normals_to_rgb, to_uint8_rgb,
                      write_html_report, write_png)
from ..render.raycast import DirectionalLight, MeshRayCaster, render_mesh
from ..scene import Scene

REPORT_DIR = "report"
MAX_TILE = 320  # largest side of a view in the report's pictures, in pixels


def write_fit_report(out_dir: Path, *, title: str, scene: Scene, rendered_normals: list[np.ndarray],
                     rendered_masks: list[np.ndarray], view_indices: list[int], settings: dict,
                     timings: dict, metrics: dict | None, log_path: Path,
                     silhouette_iou: list[float] | None = None, silhouettes: np.ndarray | None = None,
                     turntable: list[np.ndarray] | None = None) -> Path:
    """Write `out_dir/report.html` with `out_dir/report/normals.png` and `out_dir/report/losses.svg`.

    Args:
        out_dir: the fit's output folder.
        title: the page title.
        scene: the input scene (working space).
        rendered_normals: per chosen view, (H, W, 3) world-space unit normals of the result.
        rendered_masks: per chosen view, (H, W) bool (or coverage in [0, 1]) foreground of the result.
        view_indices: the scene views that were rendered, in the same order.
        settings, timings: flat name -> value tables (method settings; seconds per stage).
        metrics: name -> value against ground truth, or None when there is none.
        log_path: the run's JSON-lines loss log (`optim.loop.LOG`); a missing log gives an empty plot.
        silhouette_iou: per scene view, the IoU of the input mask and the result's silhouette.
        silhouettes: a picture of input masks against the result's (`silhouette_sheet`).
        turntable: frames of the result turning (`turntable_frames`), written as a looping GIF.
    Returns:
        The path of the HTML page.
    """
    out_dir = Path(out_dir)
    images = out_dir / REPORT_DIR
    write_png(images / "normals.png", normals_sheet(scene, rendered_normals, rendered_masks, view_indices))
    log = read_log(log_path) if Path(log_path).is_file() else []
    with atomic_path(images / "losses.svg") as tmp:
        tmp.write_text(loss_curves_svg(log))
    sections = [
        ("Normals", f'<p>Input normal maps (top) and the result\'s rendered normals (bottom), views '
                    f'{html.escape(", ".join(scene.views[i].name for i in view_indices))}.</p>'
                    f'<img src="{REPORT_DIR}/normals.png" alt="normal maps">'),
        ("Losses", f'<img src="{REPORT_DIR}/losses.svg" alt="loss curves">'),
    ]
    if turntable:
        write_gif(images / "turntable.gif", turntable)
        sections.insert(0, ("Result", f'<img src="{REPORT_DIR}/turntable.gif" alt="the result turning">'))
    if silhouette_iou is not None:
        ious = np.asarray(silhouette_iou, dtype=np.float64)
        text = (f'<p>Silhouette IoU of the input masks and the result, per view: mean {ious.mean():.4f}, '
                f'min {ious.min():.4f} (view {html.escape(scene.views[int(ious.argmin())].name)}).</p>')
        if silhouettes is not None:
            write_png(images / "silhouettes.png", silhouettes)
            text += (f'<p>Grey: both; red: input only (missed); blue: result only (extra).</p>'
                     f'<img src="{REPORT_DIR}/silhouettes.png" alt="silhouettes">')
        rows = {scene.views[i].name: round(float(v), 4) for i, v in enumerate(ious)}
        sections.append(("Silhouettes", text + metrics_table_html(rows)))
    if metrics:
        sections.append(("Metrics", metrics_table_html(metrics)))
    sections.append(("Settings", metrics_table_html(settings)))
    sections.append(("Timings", metrics_table_html(timings)))
    path = out_dir / "report.html"
    write_html_report(path, title, sections)
    return path


def normals_sheet(scene: Scene, rendered_normals: list[np.ndarray], rendered_masks: list[np.ndarray],
                  view_indices: list[int]) -> np.ndarray:
    """(rows, columns, 3) uint8 contact sheet: input views on top, rendered normals below.

    A view without a normal map shows its image or mask instead; inputs are resized (nearest) to
    the rendered size when they differ.
    """
    if not (len(rendered_normals) == len(rendered_masks) == len(view_indices)) or not view_indices:
        raise ValueError("need one rendered normal map and mask per chosen view (and at least one view)")
    bottom = [normals_to_rgb(np.asarray(n), np.asarray(m) > 0.5) for n, m in zip(rendered_normals, rendered_masks)]
    size = bottom[0].shape[:2]
    if max(size) > MAX_TILE:  # photographs of 640 x 480 and more: keep the page light
        size = (round(size[0] * MAX_TILE / max(size)), round(size[1] * MAX_TILE / max(size)))
    bottom = [_resize_nearest(b, size) for b in bottom]
    top = [_resize_nearest(_input_picture(scene, i), size) for i in view_indices]
    return contact_sheet(top + bottom, columns=len(view_indices))


def silhouette_ious(scene: Scene, rendered_masks: list[np.ndarray]) -> list[float]:
    """IoU of each view's input mask and the result's rendered coverage (both thresholded at 0.5)."""
    ious = []
    for view, rendered in zip(scene.views, rendered_masks):
        a, b = np.asarray(view.mask) > 0.5, np.asarray(rendered) > 0.5
        union = np.logical_or(a, b).sum()
        ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
    return ious


def silhouette_sheet(scene: Scene, rendered_masks: list[np.ndarray], view_indices: list[int],
                     columns: int = 4) -> np.ndarray:
    """(rows, columns, 3) uint8 sheet of input masks against the result's: grey where both cover
    the pixel, red where only the input does (missed), blue where only the result does (extra)."""
    tiles = []
    for i, rendered in zip(view_indices, rendered_masks):
        a, b = np.asarray(scene.views[i].mask) > 0.5, np.asarray(rendered) > 0.5
        tile = np.full(a.shape + (3,), 255, np.uint8)
        tile[a & b] = (150, 150, 150)
        tile[a & ~b] = (220, 30, 30)
        tile[~a & b] = (40, 80, 230)
        tiles.append(tile)
    return contact_sheet(tiles, columns=columns)  # full size: the errors are a pixel or two wide


def turntable_cameras(scene: Scene, frames: int = 24, size: int = 256) -> Cameras:
    """`frames` cameras circling the working-space origin about the input cameras' mean up axis.

    They start at the first input camera's position (so its elevation above the turntable is kept)
    and see the whole unit sphere, in which the result lies.
    """
    cameras = scene.cameras()
    up = -cameras.R[:, 1, :].double().mean(0).numpy()  # OpenCV: image y points down
    up /= max(np.linalg.norm(up), 1e-12)
    start = cameras.centers[0].double().numpy()
    distance = max(float(np.linalg.norm(start)), 1.5)
    start *= distance / max(float(np.linalg.norm(start)), 1e-12)
    angles = 2 * np.pi * np.arange(frames) / frames
    # Rodrigues rotation of `start` about `up`
    along = up * (start @ up)
    across = start - along
    eyes = (along + np.cos(angles)[:, None] * across + np.sin(angles)[:, None] * np.cross(up, across))
    fov = 2 * np.degrees(np.arcsin(1.0 / distance)) * 1.05
    return Cameras.look_at(eyes, up=up, fov_deg=fov, width=size, height=size)


def turntable_frames(mesh: trimesh.Trimesh | MeshRayCaster, scene: Scene, frames: int = 24, size: int = 192,
                     supersample: int = 1) -> list[np.ndarray]:
    """Grey renders on white of a working-space `mesh` (or a caster of it) turning
    (`turntable_cameras`), each lit by a light above and to the left of its camera, so that relief
    reads as it does in a studio shot. One ray per pixel by default: the report is written at the
    end of every budgeted fit, inside its budget."""
    cameras = turntable_cameras(scene, frames, size)
    R = cameras.R.double().numpy()  # rows: camera right, down, forward in world space
    key = -R[:, 2] - 0.6 * R[:, 1] - 0.4 * R[:, 0]
    lights = [[DirectionalLight(direction=d / np.linalg.norm(d))] for d in key]  # one per view
    out = render_mesh(mesh, cameras, supersample=supersample, lights=lights, albedo=0.8, ambient=0.15)
    grey = out["image"] + (1 - out["mask"])  # shading is premultiplied by coverage: composite on white
    return [to_uint8_rgb(np.clip(frame, 0, 1)) for frame in grey]


def write_gif(path: Path, frames: list[np.ndarray], seconds_per_turn: float = 4.0) -> None:
    """Write RGB frames as a looping GIF, atomically."""
    from PIL import Image

    pictures = [Image.fromarray(frame) for frame in frames]
    with atomic_path(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], loop=0,
                         duration=int(1000 * seconds_per_turn / len(frames)))


def _input_picture(scene: Scene, index: int) -> np.ndarray:
    view = scene.views[index]
    if view.normal is not None:
        return normals_to_rgb(view.normal, view.mask)
    if view.image is not None:
        return to_uint8_rgb(view.image)
    if view.mask is not None:
        return to_uint8_rgb(view.mask.astype(np.float32))
    return np.full((view.height, view.width, 3), 255, np.uint8)


def _resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    rows = (np.arange(size[0]) * h // size[0]).clip(0, h - 1)
    cols = (np.arange(size[1]) * w // size[1]).clip(0, w - 1)
    return image[rows][:, cols]


# ====================================================================== loss curves
