"""Multi-view reconstruction quality against CPU time, on rendered scenes of real meshes.

For each mesh: `render_scene` (as `zerolevel render` does) into V views at R^2 (normals + masks),
then fits of `--runs` iteration counts, each a separate run with its own schedule (a 800-iteration
run decays its learning rate by iteration 800), evaluated `--points` times along the way (the run
is cut in segments that resume exactly from the checkpoint, so each point is that of an
uninterrupted run). Rows: mesh, method, gradient mode, run length, iteration, optimisation seconds,
Chamfer, F-score at 0.5% and 0.25% of the bounding-box diagonal, normal consistency, and F@0.5%
against only the ground truth that some input camera sees ("seen"; scans have parts no view shows:
inner shells, the inside of a bore seen from nowhere). A summary per mesh and mode follows the
table: seconds per iteration, time to reach F@0.5% >= 0.95, the best F within 60 s and 300 s.
Meshes are rendered and scored with their holes capped (`zerolevel render --close-holes`), as every
method reconstructs a solid and views through a hole see the scan's back faces; `--open` keeps them.
Writes results/multiview.md and .json.

    python benchmarks/multiview.py [--meshes spot bunny ...] [--modes dfd analytic fd]
                                   [--runs 400 2000] [--points 2]
    python benchmarks/multiview.py --methods sdfdiff --observations shading --modes plain greedy
    python benchmarks/multiview.py --methods tetsdf --meshes bunny spot ... makehuman --runs 300
    python benchmarks/multiview.py --methods tetsdf --meshes makehuman --modes start64 --runs 600 --merge
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _report import RESULTS_DIR, previous_invocations, write_report  # noqa: E402
from zerolevel import methods  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data" / "meshes"
MESHES = {"bunny": "bunny.ply", "spot": "spot.obj", "nefertiti": "nefertiti.obj",
          "lee_perry_smith_head": "lee_perry_smith_head.obj", "rocker-arm": "rocker-arm.obj",
          "makehuman": "makehuman_base_hm08.obj"}
# OBJ groups to render: MakeHuman's base mesh also holds helper geometry (joint cubes, proxy tights,
# hair, teeth) hidden in or under the skin; its body with the long skirt proxy is a clothed figure
GROUPS = {"makehuman": ("body", "helper-skirt")}
DEFAULT_MESHES = ["bunny", "spot", "nefertiti", "lee_perry_smith_head", "rocker-arm"]
COLUMNS = ["mesh", "method", "gradient / schedule", "run iterations", "iteration", "optimisation s", "chamfer",
           "F@0.5%", "F@0.25%", "normal consistency", "F@0.5% seen", "GT seen", "final grid"]


LIGHTS = ((0.5, 1.0, 0.5), (-1.0, 0.3, 0.4), (0.3, -0.2, -1.0))  # the 3 known lights of shading scenes
# the variants each method is benchmarked in, as `fit --set` settings: SuperNormal's gradient modes,
# SDFDiff's schedules, and the tet grid's levels: "band" is the default 32 -> 64 -> 128; "start64"
# skips the 32 level, whose visual hull bloats limbs thinner than a cell (MakeHuman's forearms)
# beyond what finer levels thin again
MODES = {"supernormal": {mode: {"gradient": mode} for mode in ("dfd", "analytic", "fd")},
         "sdfdiff": {mode: {"schedule": mode} for mode in ("plain", "greedy")},
         "tetsdf": {"band": {}, "start64": {"resolutions": "64,128", "level_shares": "0.5,0.5"}}}


def make_method(method: str, scene, iters: int, mode: str):
    """The registry's method `method` with the settings of benchmark variant `mode`."""
    from zerolevel.pipeline import make_fitter

    return make_fitter(method, scene, iters, settings=MODES[method][mode])


def make_scene(gt, observations: str, views: int, res: int):
    """Normal maps + masks, or grey shading under 3 known lights + masks (no normals)."""
    from zerolevel.pipeline import render_scene

    if observations == "normals":
        return render_scene(gt, views=views, resolution=res, progress=False)
    scene = render_scene(gt, views=views, resolution=res, progress=False, light=LIGHTS)
    for view in scene.views:
        view.normal = view.depth = None
    return scene


def fit_curve(name: str, gt, scene, method: str, mode: str, iters: int, points: int) -> list[list]:
    """One run of `iters` iterations, evaluated at `points` evenly spaced iterations."""
    from zerolevel.metrics import evaluate
    from zerolevel.optim.loop import LoopConfig, run_loop

    from zerolevel.render.raycast import MeshRayCaster

    fit = make_method(method, scene, iters, mode)
    eyes = _world_centres(scene)
    caster = MeshRayCaster(gt)
    stops = sorted({max(1, round(iters * (i + 1) / points)) for i in range(points)})
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for stop in stops:
            result = run_loop(fit, out, LoopConfig(iters=stop, progress=False), resume=True)
            mesh = fit.extract(256)
            m = evaluate(mesh, gt, n_points=100_000)
            seen = evaluate(mesh, gt, n_points=100_000, visible=lambda p: caster.seen_from(p, eyes))
            rows.append([name, method, mode, iters, result.iterations, round(result.seconds, 1),
                         round(m["chamfer"], 5), round(m["fscore"]["0.005"], 4), round(m["fscore"]["0.0025"], 4),
                         round(m["normal_consistency"], 4), round(seen["fscore"]["0.005"], 4),
                         round(seen["gt_seen_fraction"], 4), _grid_size(fit, mesh)])
            print(rows[-1], flush=True)
    return rows


def _grid_size(fit, mesh) -> str:
    """SDFDiff's lattice, or the tet grid's lattice, tetrahedra and triangles ("-" for hash grids)."""
    from zerolevel.fields.grid import DenseGridSDF

    field = getattr(fit, "field", None)
    if isinstance(field, DenseGridSDF):
        return f"{field.resolution[0]}^3"
    grid = getattr(fit, "grid", None)
    if grid is not None:
        return f"{grid.resolution}^3 band: {len(grid.tets) / 1e3:.0f}k tets, {len(mesh.faces) / 1e3:.0f}k triangles"
    return "-"


def _world_centres(scene) -> np.ndarray:
    """The input cameras' centres in the mesh's units (where `evaluate` compares)."""
    centres = scene.cameras().centers.double().numpy()
    to_world = np.asarray(scene.to_world, dtype=np.float64)
    return centres @ to_world[:3, :3].T + to_world[:3, 3]


def merge_rows(name: str, rows: list[list]) -> tuple[list[list], list[dict]]:
    """The rows of an earlier results/NAME.json that `rows` do not redo, then `rows`; and the earlier
    invocations, so the table lists every command that wrote it with its date."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return rows, []
    old = json.loads(path.read_text())
    redone = {tuple(r[:4]) for r in rows}
    kept = [r + ["-"] * (len(COLUMNS) - len(r)) for r in old["rows"] if tuple(r[:4]) not in redone]
    order = {mesh: i for i, mesh in enumerate(MESHES)}
    merged = sorted(kept + rows, key=lambda r: order.get(r[0], len(order)))  # stable: runs keep their order
    return merged, previous_invocations(name)


def summary(rows: list[list]) -> str:
    """Markdown: per mesh and mode, s/iteration, time to F@0.5% >= 0.95, best F within 60 / 300 s."""
    lines = ["| mesh | method | gradient / schedule | s / iteration | s to F@0.5% >= 0.95 | best F@0.5% <= 60 s "
             "| best F@0.5% <= 300 s | best F@0.5% seen <= 300 s |", "|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r[0], r[1], r[2]) for r in rows)
    for key in keys:
        mine = [r for r in rows if (r[0], r[1], r[2]) == key]
        per_iter = np.median([r[5] / r[4] for r in mine])
        reach = [r[5] for r in mine if r[7] >= 0.95]

        def best(limit: float, column: int = 7) -> str:
            within = [r[column] for r in mine if r[5] <= limit]
            return f"{max(within):.4f}" if within else "-"

        reached = f"{min(reach):.0f}" if reach else "-"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {per_iter:.3f} | {reached} | {best(60)} | "
                     f"{best(300)} | {best(300, 10)} |")
    return "\n".join(lines)


def main() -> None:
    from zerolevel.geometry.mesh import close_holes, load_mesh

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", nargs="+", default=DEFAULT_MESHES, choices=list(MESHES))
    parser.add_argument("--methods", nargs="+", default=["supernormal"], choices=methods.names("fit"))
    parser.add_argument("--modes", nargs="+", default=None, choices=[m for modes in MODES.values() for m in modes],
                        help="SuperNormal gradient modes / SDFDiff schedules (default: dfd / plain)")
    parser.add_argument("--observations", default="normals", choices=["normals", "shading"],
                        help="normal maps + masks, or shading under 3 known lights + masks")
    parser.add_argument("--runs", nargs="+", type=int, default=[400, 2000],
                        help="iteration counts of the separate runs (the modes after the first: the shortest)")
    parser.add_argument("--points", type=int, default=2, help="evaluations per run")
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--res", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--open", action="store_true",
                        help="render and score the meshes as they are, not with their holes capped "
                             "(`render --close-holes`: the bunny's base is open)")
    parser.add_argument("--name", default="multiview", help="results file stem (default: multiview)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of results/NAME.json that this run does not redo (same mesh, "
                             "method, mode and run length), so a long table can be filled in parts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    t0 = time.perf_counter()
    for name in args.meshes:
        path = SHARED / MESHES[name]
        if not path.is_file():
            print(f"{path} missing; skipping {name}")
            continue
        gt = load_mesh(path, groups=GROUPS.get(name))
        gt = gt if args.open else close_holes(gt)
        scene = make_scene(gt, args.observations, args.views, args.res)
        for method in args.methods:
            modes = [m for m in args.modes if m in MODES[method]] if args.modes else [next(iter(MODES[method]))]
            for index, mode in enumerate(modes):
                # every run length for the first mode; the others are compared on the shortest
                for iters in (args.runs if index == 0 else [min(args.runs)]):
                    rows += fit_curve(name, gt, scene, method, mode, iters, args.points)
    command = "python benchmarks/multiview.py " + " ".join(sys.argv[1:])
    earlier = []
    if args.merge:
        rows, earlier = merge_rows(args.name, rows)
    write_report(args.name, "Multi-view fits on rendered scenes: quality against optimisation time",
                 command, COLUMNS, rows,
                 notes=(f"{args.views} views at {args.res}^2 ("
                        f"{'normals' if args.observations == 'normals' else 'shading under 3 known lights'}"
                        f" + masks) per mesh"
                        f"{'' if args.open else ' with holes capped (`render --close-holes`; the GT is the capped mesh)'}"
                        f", torch "
                        f"{torch.__version__} with {args.threads} threads; metrics per DESIGN.md with 100k "
                        f"points per surface, extraction at 256^3; the optimisation time excludes "
                        f"extraction and evaluation. \"F@0.5% seen\": recall only over the GT samples that "
                        f"some input camera sees unoccluded (\"GT seen\": their fraction). Benchmark wall "
                        f"time {time.perf_counter() - t0:.0f} s.\n\n" + summary(rows)), earlier=earlier)


if __name__ == "__main__":
    main()
