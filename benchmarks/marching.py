"""Speed of differentiable marching tetrahedra on regular Kuhn grids (the issue's goal: a million
tetrahedra in well under a second on the CPU).

For lattices of n^3 cubes (6 n^3 tetrahedra) holding a sphere's SDF: grid construction, marching
forward, and forward + backward of a surface energy (the mesh's area) to the SDF values; medians of
5 calls after a warm-up, 2 threads. Writes results/marching.md and .json.

    python benchmarks/marching.py [--sizes 32 55 80] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from _report import median_time, write_report  # noqa: E402

COLUMNS = ["lattice", "tetrahedra", "triangles", "grid build s", "forward s", "forward + backward s",
           "forward M tets/s"]


def measure(n: int) -> list:
    from zerolevel.geometry.marching import marching_tetrahedra
    from zerolevel.geometry.tetgrid import TetGrid

    start = time.perf_counter()
    grid = TetGrid.regular(n)
    build = time.perf_counter() - start
    sdf = (grid.vertices.norm(dim=1) - 0.7).requires_grad_(True)

    def forward():
        return marching_tetrahedra(grid.vertices, grid.tets, sdf)

    def forward_backward():
        verts, faces = forward()
        tri = verts[faces]
        torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=1).sum().backward()
        sdf.grad = None

    fwd, _ = median_time(forward, 5)
    both, _ = median_time(forward_backward, 5)
    faces = len(forward()[1])
    return [f"{n}^3", len(grid.tets), faces, round(build, 3), round(fwd, 3), round(both, 3),
            round(len(grid.tets) / fwd / 1e6, 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 55, 80])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        rows.append(measure(n))
        print(rows[-1], flush=True)
    write_report("marching", "Differentiable marching tetrahedra on Kuhn grids",
                 "python benchmarks/marching.py " + " ".join(sys.argv[1:]), COLUMNS, rows,
                 notes=f"torch {torch.__version__}, {args.threads} threads; a sphere of radius 0.7 in [-1, 1]^3; "
                       "medians of 5 calls after a warm-up. 55^3 cubes = 0.998M tetrahedra.")


if __name__ == "__main__":
    main()
