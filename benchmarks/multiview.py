"""Multi-view reconstruction quality and speed: SuperNormal on rendered scenes of real meshes.

For each mesh: `render_scene` (as `zerolevel render` does) into V views at R^2 (normals + masks),
then a SuperNormal fit, evaluated against the mesh every `--every` iterations (the fit is run in
segments that resume exactly from the checkpoint, so the curve is that of one uninterrupted run).
Rows: mesh, gradient mode, iteration, optimisation seconds, Chamfer, F-score at 0.5% and 0.25% of
the bounding-box diagonal, normal consistency. Writes results/multiview.md and .json.

    python benchmarks/multiview.py [--meshes spot bunny ...] [--modes dfd analytic fd] [--iters 400]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from _report import write_report  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data" / "meshes"
MESHES = {"bunny": "bunny.ply", "spot": "spot.obj", "nefertiti": "nefertiti.obj",
          "lee_perry_smith_head": "lee_perry_smith_head.obj", "rocker-arm": "rocker-arm.obj"}


def fit_curve(mesh_name: str, mode: str, views: int, res: int, iters: int, every: int) -> list[list]:
    from zerolevel.geometry.mesh import load_mesh
    from zerolevel.metrics import evaluate
    from zerolevel.pipeline import render_scene
    from zerolevel.recon.loop import LoopConfig, run_loop
    from zerolevel.recon.supernormal import SuperNormal, SuperNormalConfig

    path = SHARED / MESHES[mesh_name]
    if not path.is_file():
        print(f"{path} missing; skipping {mesh_name}")
        return []
    gt = load_mesh(path)
    scene = render_scene(gt, views=views, resolution=res, progress=False)
    method = SuperNormal(scene, iters, config=SuperNormalConfig(gradient=mode))
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for stop in range(every, iters + 1, every):
            result = run_loop(method, out, LoopConfig(iters=stop, progress=False), resume=True)
            t0 = time.perf_counter()
            mesh = method.extract(256)
            extraction = time.perf_counter() - t0
            m = evaluate(mesh, gt, n_points=100_000)
            rows.append([mesh_name, mode, result.iterations, round(result.seconds, 1), round(m["chamfer"], 5),
                         round(m["fscore"]["0.005"], 4), round(m["fscore"]["0.0025"], 4),
                         round(m["normal_consistency"], 4), round(extraction, 2)])
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", nargs="+", default=list(MESHES), choices=list(MESHES))
    parser.add_argument("--modes", nargs="+", default=["dfd"], choices=["dfd", "analytic", "fd"])
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.meshes:
        for mode in args.modes:
            rows += fit_curve(name, mode, args.views, args.res, args.iters, args.every)
    write_report("multiview", "SuperNormal on rendered scenes: quality against optimisation time",
                 "python benchmarks/multiview.py " + " ".join(sys.argv[1:]),
                 ["mesh", "gradient", "iteration", "optimisation s", "chamfer", "F@0.5%", "F@0.25%",
                  "normal consistency", "extraction s (256^3)"], rows,
                 notes=(f"{args.views} views at {args.res}^2 (normals + masks) per mesh, torch "
                        f"{torch.__version__} with {args.threads} threads; metrics per DESIGN.md with 100k "
                        f"points per surface; the optimisation time excludes extraction and evaluation."))


if __name__ == "__main__":
    main()
