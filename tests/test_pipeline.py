"""End-to-end jobs: the demo renders the bundled Spot, fits it and reports."""

import json

from zerolevel.geometry.mesh import load_mesh
from zerolevel.pipeline import run_demo


def test_demo_end_to_end_small(tmp_path):
    metrics = run_demo(tmp_path / "demo", views=6, resolution=64, iters=15, grid=64, progress=False)
    for name in ("mesh.ply", "metrics.json", "report.html", "report/normals.png", "report/losses.svg",
                 "scene/scene.json", "checkpoint.pt", "log.jsonl"):
        assert (tmp_path / "demo" / name).is_file(), name
    assert json.loads((tmp_path / "demo" / "metrics.json").read_text())["chamfer"] == metrics["chamfer"]
    assert load_mesh(tmp_path / "demo" / "mesh.ply").is_watertight
    assert 'src="report/normals.png"' in (tmp_path / "demo" / "report.html").read_text()
