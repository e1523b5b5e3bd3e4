"""End-to-end jobs: the demo renders the bundled Spot, fits it and reports."""

import json

import numpy as np

from zerolevel import methods
from zerolevel.geometry.mesh import load_mesh
from zerolevel.pipeline import run_demo

# SuperNormal's initial sphere against Spot: Chamfer 0.075 and F@0.5% 0.03 of the diagonal,
# silhouette IoU ~0.5 (tests/test_fit.py). 15 steps of the small demo measured Chamfer 0.037,
# F@0.5% 0.082, silhouette IoU 0.69-0.78.
CHAMFER_BELOW, FSCORE_ABOVE, SILHOUETTE_ABOVE = 0.05, 0.05, 0.6


def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    metrics = run_demo(out, views=6, resolution=64, iters=15, grid=64, progress=False)
    for name in ("mesh.ply", "metrics.json", "summary.json", "report.html", "report/normals.png",
                 "report/losses.svg", "report/silhouettes.png", "report/turntable.gif",
                 "scene/scene.json", "checkpoint.pt", "log.jsonl"):
        assert (out / name).is_file(), name
    assert load_mesh(out / "mesh.ply").is_watertight

    # the reported quality: far from converged, but clearly past the initial sphere
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["tau_units"] == "gt_bbox_diagonal" and metrics["points"] >= 100_000
    assert metrics["chamfer"] < CHAMFER_BELOW and metrics["fscore"]["0.005"] > FSCORE_ABOVE
    assert metrics["fscore"]["0.0025"] <= metrics["fscore"]["0.005"]
    assert 0.5 < metrics["normal_consistency"] <= 1

    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == methods.DEFAULT_FIT and summary["iterations"] == 15
    assert summary["stopped"] == "iterations" and summary["resolution"] == 64
    assert summary["metrics"] == metrics
    ious = summary["silhouette_iou"]
    assert len(ious["per_view"]) == 6 and ious["min"] == min(ious["per_view"]) > SILHOUETTE_ABOVE
    assert ious["mean"] == round(float(np.mean(ious["per_view"])), 5)

    # the log ends at the last step with the losses the summary reports
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["iter"] == 15
    assert {k: last[k] for k in summary["losses"]} == summary["losses"]
    assert np.isfinite(list(summary["losses"].values())).all()

    # the report shows the same figures
    html = (out / "report.html").read_text()
    assert 'src="report/normals.png"' in html and 'src="report/turntable.gif"' in html
    assert f"<th>chamfer</th><td>{metrics['chamfer']:.6g}</td>" in html
    assert f"<th>F-score @ 0.005</th><td>{metrics['fscore']['0.005']:.6g}</td>" in html
    assert f"mean {ious['mean']:.4f}, min {ious['min']:.4f}" in html
    assert "<th>views</th><td>6</td>" in html and "<th>iterations</th><td>15</td>" in html
