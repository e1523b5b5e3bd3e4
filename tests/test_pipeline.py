"""End-to-end jobs: the demo reconstructs the bundled Spot and reports it."""

import json

from zerolevel.geometry.mesh import load_mesh
from zerolevel.pipeline import run_demo


def test_demo_end_to_end_small(tmp_path):
    metrics = run_demo(tmp_path / "demo", views=12, resolution=96, grid=96, progress=False)
    for name in ("mesh.ply", "metrics.json", "views.png", "report.html", "scene/scene.json"):
        assert (tmp_path / "demo" / name).is_file(), name
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["chamfer"] == metrics["chamfer"]
    # a 12-view visual hull of Spot at 96^2: about 0.4% of the diagonal on average
    assert metrics["chamfer"] < 0.006
    assert metrics["fscore"]["0.005"] > 0.65
    mesh = load_mesh(tmp_path / "demo" / "mesh.ply")
    assert mesh.is_watertight
    assert "<img" in (tmp_path / "demo" / "report.html").read_text()
