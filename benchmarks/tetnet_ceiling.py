"""What a tet-grid SDF can score at best: the true signed distance of each object sampled at the grid's
vertices, meshed by marching tetrahedra and scored by the single-view voxel-IoU protocol (issue 17).

TetNet predicts SDF values at the vertices of a regular tet grid (`grid` cubes per axis over
[-0.55, 0.55]^3); a part thinner than a cell can fall between the vertices and vanish. This measures
that ceiling with no learning at all: for each generated object (`shapes.object_specs`, normalised as
the datasets normalise it) the true SDF on the lattice -> `geometry.marching` -> `evaluate.voxel_iou`
against the object's 32^3 protocol voxels (`occupancy.solid_voxels`), as `zerolevel eval-set` scores a
prediction. `--shifts` also scores the same surface moved outwards by a fraction of a cell (the SDF
minus shift x cell): how fast the protocol punishes a prediction that is a little too fat.

    python benchmarks/tetnet_ceiling.py                  # 8 objects per category, grids 16 32 64
    python benchmarks/tetnet_ceiling.py --count 2 --grids 16 --name scratch_ceiling      # quick check

The distance is the distance to the nearest of --surface-points samples of the surface (their spacing,
~0.002, is a few percent of a 32-grid cell), signed by the exact inside test (`occupancy.occupancy`).
Writes results/<name>.md and .json (default tetnet_ceiling).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import limit_threads, write_report  # noqa: E402

BOUNDS = 0.55  # TetNetConfig.bounds


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="objects per category (default 8)")
    parser.add_argument("--grids", type=int, nargs="+", default=[16, 32, 64], help="tet grid cubes per axis")
    parser.add_argument("--shifts", type=float, nargs="+", default=[0.0, 0.25, 0.5],
                        help="outward moves of the surface, in cells of each grid (default 0 0.25 0.5)")
    parser.add_argument("--surface-points", type=int, default=500_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="tetnet_ceiling")
    return parser.parse_args(argv)


def lattice_sdf(mesh, points, surface_points: int, seed: int):
    """(M,) signed distance (negative inside) of `points` to `mesh`: nearest surface sample, exact sign."""
    import numpy as np
    import trimesh
    from pykdtree.kdtree import KDTree

    from zerolevel.geometry.occupancy import occupancy

    samples, _ = trimesh.sample.sample_surface(mesh, surface_points, seed=seed)
    distance, _ = KDTree(np.asarray(samples)).query(points)
    return np.where(occupancy(mesh, points), -distance, distance)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    limit_threads(args.threads)
    import numpy as np
    import torch

    from zerolevel.geometry.marching import marching_tetrahedra
    from zerolevel.geometry.occupancy import solid_voxels
    from zerolevel.geometry.tetgrid import TetGrid
    from zerolevel.learn import shapes
    from zerolevel.learn.dataset.settings import VOXEL_BOUNDS
    from zerolevel.learn.dataset.sources import generated_sources
    from zerolevel.learn.evaluate import voxel_iou

    start = time.perf_counter()
    grids = {g: TetGrid.regular(g, bounds=(-BOUNDS, BOUNDS)) for g in args.grids}
    ious: dict[tuple, list[float]] = defaultdict(list)
    for source in generated_sources(shapes.CATEGORIES, args.count, args.seed):
        mesh = source.mesh()
        voxels = solid_voxels(mesh, VOXEL_BOUNDS, 32)
        for g, grid in grids.items():
            sdf = lattice_sdf(mesh, grid.vertices.double().numpy(), args.surface_points, args.seed)
            for shift in args.shifts:
                values = torch.from_numpy(sdf - shift * grid.cell).float()
                verts, faces = marching_tetrahedra(grid.vertices, grid.tets, values)
                ious[g, shift, source.category].append(voxel_iou(verts.double().numpy(), faces.numpy(), voxels))
        print(f"{source.id} done", flush=True)
    rows = []
    for g in args.grids:
        for shift in args.shifts:
            per = [float(np.mean(ious[g, shift, c])) for c in shapes.CATEGORIES]
            rows.append([g, shift, *per, float(np.mean(per))])
    command = "python benchmarks/tetnet_ceiling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    notes = (f"{args.count} generated objects per category (seed {args.seed}); the true SDF at the vertices of "
             f"the regular tet grid over [-{BOUNDS}, {BOUNDS}]^3 (distance to the nearest of {args.surface_points} "
             f"surface samples, exact sign), minus 'shift' x the grid's cell, meshed by marching tetrahedra; voxel "
             f"IoU at 32^3 against the object's protocol voxels, mean per category and over categories. No "
             f"network: the best a TetNet at that grid scores when it predicts the true distance. Benchmark wall "
             f"time {time.perf_counter() - start:.0f} s.")
    columns = ["grid", "shift (cells)", *(f"IoU {c}" for c in shapes.CATEGORIES), "mean IoU"]
    write_report(args.name, "The tet-grid representation's ceiling: the true SDF on the lattice, scored by voxel IoU",
                 command, columns, rows, notes=notes)
    print((HERE / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
