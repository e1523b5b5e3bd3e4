"""Speed of the evaluation metrics: Chamfer + F-score at 200k points, and volumetric IoU.

Data: /work/shared/data/meshes/bunny.ply against a copy whose vertices are perturbed by Gaussian noise
(sigma = 0.1 % of the diagonal), and spot.obj against a copy scaled by 1.02 for IoU; falls back to
icospheres when a mesh is missing. Goal (DESIGN.md): Chamfer + F-score under 2 s with 200k points per
surface on 2 threads. Writes benchmarks/results/metrics.{md,json}.

    python benchmarks/metrics.py [--runs 5]
"""

from __future__ import annotations

import os

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))  # pykdtree's OpenMP threads; before import

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import trimesh  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _report import write_report  # noqa: E402
from zerolevel import metrics  # noqa: E402
from zerolevel.geometry import occupancy  # noqa: E402
from zerolevel.geometry.mesh import load_mesh  # noqa: E402

MESHES = Path("/work/shared/data/meshes")


def timed(fn, runs: int) -> tuple[float, object]:
    """Median wall-clock seconds of `runs` calls, and the last result."""
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def load_or_sphere(name: str, radius: float) -> tuple[trimesh.Trimesh, str]:
    path = MESHES / name
    if path.is_file():
        return load_mesh(path), name
    print(f"{path} not found: using an icosphere instead")
    return trimesh.creation.icosphere(subdivisions=5, radius=radius), "icosphere(5)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="repetitions; the median is reported")
    args = parser.parse_args()
    runs = args.runs
    n = metrics.DEFAULT_POINTS
    rows = []

    # ---- surface metrics: bunny vs perturbed bunny
    gt, gt_name = load_or_sphere("bunny.ply", 1.0)
    rng = np.random.default_rng(0)
    diagonal = float(np.linalg.norm(gt.extents))
    pred = gt.copy()
    pred.vertices = pred.vertices + rng.normal(scale=1e-3 * diagonal, size=pred.vertices.shape)
    data = f"{gt_name} ({len(gt.faces)} faces) vs its perturbed copy"

    t_sample, (p_pts, g_pts) = timed(lambda: (metrics.sample_surface(pred, n, 0)[0],
                                              metrics.sample_surface(gt, n, 1)[0]), runs)
    p32, g32 = (p_pts / diagonal).astype(np.float32), (g_pts / diagonal).astype(np.float32)
    t_nn, _ = timed(lambda: (metrics.nearest_neighbours(g32, p32), metrics.nearest_neighbours(p32, g32)),
                    runs)
    p64, g64 = p32.astype(np.float64), g32.astype(np.float64)
    t_nn64, _ = timed(lambda: (metrics.nearest_neighbours(g64, p64), metrics.nearest_neighbours(p64, g64)),
                      runs)
    t_total, result = timed(lambda: metrics.surface_metrics(pred, gt, n_points=n), runs)
    rows += [
        ["sampling, both surfaces", data, f"2 x {n}", t_sample],
        ["nearest neighbours, both directions (float32)", data, f"{n} x {n}", t_nn],
        ["nearest neighbours, both directions (float64, not used)", data, f"{n} x {n}", t_nn64],
        ["surface_metrics: Chamfer + F-score + normals", data, f"{n} per surface", t_total],
    ]
    print(metrics.format_table(result))

    # ---- volumetric IoU: spot vs spot scaled by 1.02
    spot, spot_name = load_or_sphere("spot.obj", 0.5)
    bigger = spot.copy()
    bigger.apply_scale(1.02)
    spot_data = f"{spot_name} ({len(spot.faces)} faces) vs 1.02 x itself"
    for res in (32, 128):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_iou, iou = timed(lambda: metrics.volume_iou(bigger, spot, resolution=res), runs)
        rows.append([f"volume_iou (grid lines, IoU {iou:.4f})", spot_data, f"{res}^3", t_iou])

    # ---- why grid lines: occupancy of the 32^3 cell centres by the per-point paths (one run each)
    lo, hi = spot.bounds
    centres = occupancy.grid_centres(np.stack([lo, hi]), 32)
    points = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, 3)
    t_rays, _ = timed(lambda: occupancy.ray_winding_number(spot, points), 1)
    t_exact, _ = timed(lambda: occupancy.winding_number(spot, points), 1)
    rows += [["occupancy at points, 6 rays per point (one mesh)", spot_data, "32^3", t_rays],
             ["occupancy at points, exact winding number (one mesh)", spot_data, "32^3", t_exact]]

    for row in rows:
        print(f"{row[0]:<58} {row[2]:>18} {row[3]:8.3f} s")
    notes = (f"{THREADS} threads (OMP_NUM_THREADS for pykdtree; numpy/Embree as configured), wall-clock "
             f"seconds, median of {runs} runs except the two per-point occupancy rows (1 run). "
             "Goal: Chamfer + F-score < 2 s at 200k points.")
    write_report("metrics", "Evaluation metrics: speed", "python benchmarks/metrics.py",
                 ["measure", "data", "size", "seconds"], rows, notes=notes)


if __name__ == "__main__":
    main()
