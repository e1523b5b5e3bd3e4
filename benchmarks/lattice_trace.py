"""Speed of sphere tracing a batch of SDF lattices (`render.lattice_trace`, SDFNet's renderer) beside the
one-field tracer (`render.spheretrace.render_sdf` on a `DenseGridSDF`, one lattice after another).

A training step of SDFNet renders every sample's lattice in its views: B lattices, V views each, at
S^2 pixels. Per case (B, lattice nodes per side), forward (under no_grad: mask, depth, normals, soft
silhouette) and forward + backward (a loss on the normals and the soft silhouette, backward into the
lattice values), median over a few repetitions after a warm-up:
- "batched": `render_lattices`, all B V views in one march (every ray reads its own lattice);
- "one by one": `render_sdf` of each lattice as a `DenseGridSDF` (its box [-0.55, 0.55]^3 inside the
  tracer's bounding sphere of radius 1), the V views of one lattice per call.
The lattices: ellipsoids of random radii (seeded) with 1% of a cell of noise, as a trained network's
are; the cameras: the datasets' ring (distance 2.732, 30 degree field of view), random views.
Issue 19's goal: a batch of 16 lattices at 64^2 forward + backward well under a second on 2 cores.

    python benchmarks/lattice_trace.py                  # 2 threads, B = 1, 4, 16 at 33^3 and 65^3
    python benchmarks/lattice_trace.py --threads 1 --batches 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import limit_threads, median_time, write_report  # noqa: E402

BOUND = 0.55


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16], help="lattices per call")
    parser.add_argument("--nodes", type=int, nargs="+", default=[33, 65], help="lattice nodes per side")
    parser.add_argument("--views", type=int, default=2, help="views per lattice (default 2, SDFNet's)")
    parser.add_argument("--size", type=int, default=64, help="pixels per side (default 64, SDFNet's renders)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="lattice_trace")
    return parser.parse_args(argv)


def ellipsoid_lattices(batch: int, nodes: int, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-BOUND, BOUND, nodes)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    radii = 0.15 + 0.3 * torch.rand(batch, 3, generator=generator)
    # a distance-like field: the scaled ellipsoid function, 1-Lipschitz near its surface
    values = [((points / r).norm(dim=-1) - 1) * r.min() for r in radii]
    cell = 2 * BOUND / (nodes - 1)
    return torch.stack(values) + 0.01 * cell * torch.randn(batch, nodes, nodes, nodes, generator=generator)


def cases(args: argparse.Namespace) -> list[dict]:
    import torch

    from zerolevel.cameras import Cameras
    from zerolevel.fields.grid import DenseGridSDF
    from zerolevel.render.lattice_trace import Lattices, render_lattices
    from zerolevel.render.spheretrace import render_sdf

    ring = Cameras.ring(n_views=24, width=args.size, height=args.size)
    rows = []
    for nodes in args.nodes:
        for batch in args.batches:
            values = ellipsoid_lattices(batch, nodes)
            views = torch.randint(0, 24, (args.views * batch,), generator=torch.Generator().manual_seed(1))
            cameras = ring[views]
            which = torch.arange(len(cameras)) % batch
            bounds = ((-BOUND,) * 3, (BOUND,) * 3)

            def batched(backward: bool):
                lattice = values.clone().requires_grad_(backward)
                with torch.set_grad_enabled(backward):
                    out = render_lattices(Lattices(lattice, BOUND), cameras, which)
                    if backward:
                        (out["normal"].sum() + out["soft_mask"].sum()).backward()

            def one_by_one(backward: bool):
                for k in range(batch):
                    field = DenseGridSDF(values[k].clone(), bounds)
                    field.values.requires_grad_(backward)
                    with torch.set_grad_enabled(backward):
                        out = render_sdf(field, cameras[which == k])
                        if backward:
                            (out["normal"].sum() + out["soft_mask"].sum()).backward()

            row = {"nodes": nodes, "batch": batch}
            for name, fn in (("batched", batched), ("one by one", one_by_one)):
                for backward in (False, True):
                    row[(name, backward)] = median_time(lambda: fn(backward), args.repeats)[0]
            rows.append(row)
            print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    limit_threads(args.threads)
    import platform

    import torch

    torch.set_num_threads(args.threads)
    rows = cases(args)
    table = [[r["nodes"], r["batch"], r["batch"] * args.views, r[("batched", False)], r[("batched", True)],
              r[("one by one", False)], r[("one by one", True)],
              r[("one by one", True)] / r[("batched", True)]] for r in rows]
    command = "python benchmarks/lattice_trace.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(args.name, "Sphere tracing a batch of SDF lattices: batched vs one lattice at a time", command,
                 ["lattice nodes", "lattices", "views", "batched forward s", "batched fwd + bwd s",
                  "one by one forward s", "one by one fwd + bwd s", "fwd + bwd speed-up"], table,
                 notes=f"{args.views} views per lattice at {args.size}^2, median of {args.repeats} after a warm-up; "
                       f"{args.threads} thread(s), torch {torch.__version__}, {platform.processor() or 'cpu'}. "
                       "Lattices: seeded random ellipsoids (radii 0.15-0.45) with 1% of a cell of noise, over "
                       "[-0.55, 0.55]^3; cameras: random views of the datasets' 24-view ring. Batched: "
                       "`render_lattices` (one march for all views); one by one: `render_sdf` of a `DenseGridSDF` "
                       "per lattice. The loss: sum of normals and soft silhouette.")
    print((HERE / "results" / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
