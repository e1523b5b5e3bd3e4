"""Fit report: an offline HTML page with relative image files, loss curves drawn as SVG."""

import json
import math
import xml.etree.ElementTree as ET

import imageio.v3 as iio
import numpy as np

from zerolevel.cameras import Cameras
import trimesh
from PIL import Image

from zerolevel.report import loss_curves_svg
from zerolevel.recon.fit_report import (silhouette_ious, silhouette_sheet, turntable_cameras,
                                        turntable_frames, write_fit_report)
from zerolevel.scene import Scene

SVG = "{http://www.w3.org/2000/svg}"


def _scene(n=3, size=16):
    cameras = Cameras.ring(n, width=size, height=size)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2
    normal = np.zeros((n, size, size, 3), np.float32)
    normal[:, mask] = [0, 0, -1]
    return Scene.from_render(cameras, {"normal": normal, "mask": np.repeat(mask[None], n, 0).astype(float)},
                             np.eye(4))


def _log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_files_are_written_and_referenced_relatively(tmp_path):
    scene = _scene()
    log = tmp_path / "log.jsonl"
    _log(log, [{"iter": 10 * i, "time": 0.1 * i, "normal": 1.0 / i, "mask": 0.5 / i ** 2, "eikonal": 0.01}
               for i in range(1, 21)])
    rendered = [v.normal for v in scene.views[:2]]
    masks = [v.mask for v in scene.views[:2]]
    path = write_fit_report(tmp_path / "out", title="fit of spot", scene=scene, rendered_normals=rendered,
                            rendered_masks=masks, view_indices=[0, 1], settings={"method": "supernormal"},
                            timings={"fit": 12.5}, metrics={"chamfer": 0.0123, "f_score": 0.87}, log_path=log)
    assert path == tmp_path / "out" / "report.html"
    page = path.read_text()
    assert 'src="report/normals.png"' in page and 'src="report/losses.svg"' in page
    assert "data:image" not in page
    assert "chamfer" in page and "0.0123" in page and "f_score" in page and "supernormal" in page
    sheet = iio.imread(tmp_path / "out" / "report" / "normals.png")
    assert sheet.shape[0] > 2 * 16 and sheet.shape[1] > 2 * 16  # two rows of two 16x16 tiles
    svg = ET.parse(tmp_path / "out" / "report" / "losses.svg").getroot()
    lines = svg.findall(f"{SVG}polyline")
    assert len(lines) == 3
    assert [line.find(f"{SVG}title").text for line in lines] == ["normal", "mask", "eikonal"]
    assert all(len(line.get("points").split()) == 20 for line in lines)


def test_loss_curves_use_a_linear_axis_with_non_positive_values_and_skip_non_finite():
    rows = [{"iter": i, "a": math.sin(i), "b": float("nan") if i == 3 else i} for i in range(1, 11)]
    svg = ET.fromstring(loss_curves_svg(rows))
    lines = svg.findall(f"{SVG}polyline")
    assert len(lines) == 2 and len(lines[1].get("points").split()) == 9
    assert "log scale" not in loss_curves_svg(rows)
    assert "log scale" in loss_curves_svg([{"iter": i, "a": 10.0 ** -i} for i in range(1, 6)])


def test_missing_log_and_mask_only_scene_still_give_a_report(tmp_path):
    scene = _scene()
    for view in scene.views:
        view.normal = None
    rendered = np.zeros((16, 16, 3), np.float32)
    path = write_fit_report(tmp_path, title="t", scene=scene, rendered_normals=[rendered],
                            rendered_masks=[np.zeros((16, 16), bool)], view_indices=[2], settings={},
                            timings={}, metrics=None, log_path=tmp_path / "missing.jsonl")
    assert "Metrics" not in path.read_text()
    svg = ET.parse(tmp_path / "report" / "losses.svg").getroot()
    assert svg.findall(f"{SVG}polyline") == []


def test_silhouette_iou_and_sheet_colours():
    scene = _scene(n=2)
    full = scene.views[0].mask.astype(bool)
    half = full.copy()
    half[:, :8] = False  # keeps half the disc
    extra = full | np.eye(16, dtype=bool)
    ious = silhouette_ious(scene, [half, extra])
    assert np.isclose(ious[0], half.sum() / full.sum())
    assert np.isclose(ious[1], full.sum() / extra.sum())
    sheet = silhouette_sheet(scene, [half, extra], [0, 1], columns=2)
    colours = {tuple(c) for c in sheet.reshape(-1, 3)}
    assert {(150, 150, 150), (220, 30, 30), (40, 80, 230), (255, 255, 255)} <= colours


def test_turntable_circles_the_up_axis_and_shows_the_object(tmp_path):
    scene = _scene(n=4)  # a ring about +y at elevation 30 degrees
    cameras = turntable_cameras(scene, frames=8, size=32)
    centres = cameras.centers.double().numpy()
    first = scene.cameras().centers[0].double().numpy()
    np.testing.assert_allclose(centres[0], first, atol=1e-5)
    np.testing.assert_allclose(centres[:, 1], first[1], atol=1e-5)  # same height above the turntable
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), np.linalg.norm(first), atol=1e-5)
    np.testing.assert_allclose(cameras.forward.double().numpy(), -centres / np.linalg.norm(centres, axis=1,
                               keepdims=True), atol=1e-5)
    frames = turntable_frames(trimesh.creation.icosphere(3, radius=0.8), scene, frames=8, size=32)
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
    for frame in frames:  # a sphere looks the same from every side, and fills the view's middle
        assert (frame[16, 16] < 250).all() and (frame[0, 0] == 255).all()
        assert np.abs(frame.astype(int) - frames[0]).mean() < 2
    rendered = [v.normal for v in scene.views[:1]]
    write_fit_report(tmp_path, title="t", scene=scene, rendered_normals=rendered, rendered_masks=[scene.views[0].mask],
                     view_indices=[0], settings={}, timings={}, metrics=None, log_path=tmp_path / "none.jsonl",
                     silhouette_iou=[1.0, 0.9, 0.95, 1.0], turntable=frames)
    page = (tmp_path / "report.html").read_text()
    assert 'src="report/turntable.gif"' in page and "min 0.9000" in page
    with Image.open(tmp_path / "report" / "turntable.gif") as gif:
        assert gif.n_frames == 8


def test_normals_sheet_keeps_large_views_small():
    from zerolevel.recon.fit_report import MAX_TILE, normals_sheet

    scene = _scene(n=2, size=400)
    sheet = normals_sheet(scene, [v.normal for v in scene.views], [v.mask for v in scene.views], [0, 1])
    assert sheet.shape[0] <= 2 * MAX_TILE + 10 and sheet.shape[1] <= 2 * MAX_TILE + 10
