"""The default multi-view fit against a plain dense-grid fitter, by time budget (issue 20's table).

For each mesh (the shared scans and the bundled CAD bracket): 32 views at 256^2 (sphere layout,
normals + masks), rendered as `zerolevel render` does and written in the NeuS layout (`export_neus`),
as a user's scan would arrive. Then, for each budget B and each row, one command in a fresh process:
- "default": `zerolevel fit NEUS -o OUT --budget B` with no other option;
- "baseline": `python benchmarks/dense_baseline.py NEUS --budget B` (the ~200-line dense-grid
  fitter of issue 20's description);
- "method:NAME": `zerolevel fit NEUS --method NAME --budget B` (other registered methods).
Its wall time is that of the whole command (start-up, scene loading, checks, fit, extraction,
report). Meshes are scored against the mesh as it was rendered (scans uncapped, as a user's), with
the project's metrics (100k points, F at 0.5% and 0.25% of the GT bounding-box diagonal).
Writes results/{name}.md and .json.

    python benchmarks/fit_speed.py [--meshes spot bunny ...] [--budgets 10 30 60] [--rows default baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from _report import RESULTS_DIR, previous_invocations, write_report  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "data" / "meshes"
BUNDLED = HERE.parent / "src" / "zerolevel" / "data"
MESHES = {"bunny": SHARED / "bunny.ply", "spot": SHARED / "spot.obj", "nefertiti": SHARED / "nefertiti.obj",
          "lee_perry_smith_head": SHARED / "lee_perry_smith_head.obj", "rocker-arm": SHARED / "rocker-arm.obj",
          "cad-bracket": BUNDLED / "cad_bracket.obj"}
COLUMNS = ["mesh", "row", "budget s", "wall s", "wall / budget", "F@0.5%", "F@0.25%", "chamfer",
           "normal consistency"]


def prepare_scene(name: str, work: Path, views: int, resolution: int) -> tuple[Path, Path]:
    """Render `name` once into work/NAME/neus (NeuS layout); returns (neus folder, GT mesh file)."""
    from zerolevel.exporters import export_neus
    from zerolevel.geometry.mesh import load_mesh
    from zerolevel.pipeline import render_scene

    gt = MESHES[name]
    neus = work / name / "neus"
    if not (neus / "cameras_sphere.npz").is_file():
        scene = render_scene(load_mesh(gt), views=views, resolution=resolution, progress=False, source=str(gt))
        export_neus(scene, neus)
    return neus, gt


def command_of(row: str, neus: Path, out: Path, budget: float, threads: int,
               settings: list[str] = ()) -> list[str]:
    """The command line that runs `row` on `neus` with budget `budget` (`settings`: `fit --set`)."""
    if row == "baseline":
        return [sys.executable, str(HERE / "dense_baseline.py"), str(neus), "--budget", str(budget),
                "-o", str(out / "mesh.ply"), "--threads", str(threads)]
    method = [] if row == "default" else ["--method", row.removeprefix("method:")]
    return [sys.executable, "-m", "zerolevel", "fit", str(neus), "-o", str(out), "--budget", str(budget),
            "--threads", str(threads), "-q", *method, *(f"--set={kv}" for kv in settings)]


def run_row(row: str, neus: Path, gt: Path, out: Path, budget: float, threads: int,
            settings: list[str] = ()) -> dict:
    """Run one command, time it, score its mesh."""
    from zerolevel.metrics import evaluate

    out.mkdir(parents=True, exist_ok=True)
    command = command_of(row, neus, out, budget, threads, settings)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (out / "stdout.txt").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    metrics = evaluate(out / "mesh.ply", gt)
    return {"wall": wall, "metrics": metrics, "command": shlex.join(command)}


def merge_rows(name: str, rows: list[list]) -> tuple[list[list], list[dict]]:
    """The rows of an earlier results/NAME.json that `rows` do not redo (same mesh, row, budget), with
    `rows`, in mesh, budget, row order; and the earlier invocations, listed in the table."""
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return rows, []
    redone = {tuple(r[:3]) for r in rows}
    kept = [r for r in json.loads(path.read_text())["rows"] if tuple(r[:3]) not in redone]
    meshes = {mesh: i for i, mesh in enumerate(MESHES)}
    merged = sorted(kept + rows, key=lambda r: (meshes.get(r[0], len(meshes)), r[2], r[1] != "default"))
    return merged, previous_invocations(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", nargs="+", default=list(MESHES), choices=list(MESHES))
    parser.add_argument("--budgets", nargs="+", type=float, default=[10, 30, 60, 120, 300])
    parser.add_argument("--rows", nargs="+", default=["default", "baseline"],
                        help="default, baseline or method:NAME")
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/zerolevel-bench/fit_speed"))
    parser.add_argument("--name", default="fit_speed")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of an earlier results/NAME.json that this run does not redo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="`fit --set` for the zerolevel rows (screening settings)")
    args = parser.parse_args()

    rows, records = [], []
    for name in args.meshes:
        if not MESHES[name].is_file():
            print(f"skip {name}: {MESHES[name]} is not here")
            continue
        neus, gt = prepare_scene(name, args.work, args.views, args.resolution)
        for budget in args.budgets:
            for row in args.rows:
                out = args.work / name / "runs" / f"{args.name}_{row.replace(':', '-')}_{budget:g}"
                result = run_row(row, neus, gt, out, budget, args.threads, args.set)
                m = result["metrics"]
                fs = m["fscore"]
                line = [name, row, budget, round(result["wall"], 1), round(result["wall"] / budget, 2),
                        fs["0.005"], fs["0.0025"], m["chamfer"], m["normal_consistency"]]
                print(" | ".join(str(x) for x in line), flush=True)
                rows.append(line)
                records.append({"mesh": name, "row": row, "budget": budget, **result})
    notes = (f"{args.views} views at {args.resolution}^2 (normals + masks, sphere layout) per mesh, written in "
             f"the NeuS layout; every row is one command in a fresh process with {args.threads} threads "
             "(torch 2.13.0+cpu), its wall time the whole command's. Scored against the rendered mesh (scans "
             "uncapped) with the project's metrics, 100k points, F at fractions of the GT bounding-box "
             "diagonal. 'baseline' is benchmarks/dense_baseline.py; 'default' is `zerolevel fit` with no option.")
    command = "python benchmarks/fit_speed.py " + shlex.join(sys.argv[1:])
    earlier = None
    if args.merge:
        rows, earlier = merge_rows(args.name, rows)
    write_report(args.name, "The default multi-view fit by time budget, against a plain dense-grid fitter",
                 command, COLUMNS, rows, notes, earlier=earlier)
    (args.work / f"{args.name}_records.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
