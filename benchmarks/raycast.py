"""Speed of the ground-truth ray caster (`zerolevel.render.raycast`): views per second.

Renders mask + normals + depth (+ the Lambertian image, which costs little) of meshes normalised to
the unit sphere (radius 0.9, working space) from cameras on a sphere (distance 3, 40 degree field
of view; the object covers about a fifth of each image) at 256^2 and 512^2, with and without 2x2
supersampling, on N threads (default 2). Reports the median of a few repetitions and writes
`benchmarks/results/raycast.{md,json}`.

    python benchmarks/raycast.py                 # bunny.ply and nefertiti.obj from ../shared/data
    python benchmarks/raycast.py --threads 2 --repeats 5 --data DIR
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from _report import limit_threads  # benchmarks/ is on sys.path when a script there runs

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data" / "meshes")
    parser.add_argument("--meshes", nargs="+", default=["bunny.ply", "nefertiti.obj"])
    args = parser.parse_args(argv)
    limit_threads(args.threads)

    import numpy as np
    import torch

    try:
        import zerolevel  # noqa: F401
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(HERE.parent / "src"))
    from zerolevel.cameras import Cameras
    from zerolevel.geometry.mesh import load_mesh, transform_mesh, unit_sphere_transform
    from zerolevel.render.raycast import MeshRayCaster

    sys.path.insert(0, str(HERE))
    from _report import write_report

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)

    configs = [(256, 1, 16), (256, 2, 8), (512, 1, 8), (512, 2, 4)]  # (size, supersample, views)
    rows = []
    for name in args.meshes:
        path = args.data / name
        if not path.is_file():
            print(f"skipping {path}: not found", file=sys.stderr)
            continue
        mesh = load_mesh(path)
        mesh = transform_mesh(mesh, np.linalg.inv(unit_sphere_transform(mesh)))
        t0 = time.perf_counter()
        caster = MeshRayCaster(mesh)
        build = time.perf_counter() - t0
        for size, ss, n_views in configs:
            cams = Cameras.sphere(n_views, distance=3.0, fov_deg=40, width=size, height=size)
            caster.render(cams[:1], supersample=ss)  # warm-up
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = caster.render(cams, supersample=ss)
                times.append(time.perf_counter() - t0)
            sec = float(np.median(times))
            rays_per_pixel = ss * ss + (1 if ss % 2 == 0 else 0)  # even s also casts the centre ray
            rays = n_views * size * size * rays_per_pixel
            rows.append([name, len(mesh.faces), f"{size}^2", ss, n_views, round(build, 3),
                         round(sec / n_views * 1000, 2), round(n_views / sec, 1),
                         round(rays / sec / 1e6, 2), round(float(out["mask"].mean()), 3)])
            print(" | ".join(str(v) for v in rows[-1]), flush=True)

    command = "python benchmarks/raycast.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    notes = (f"{args.threads} threads (torch intra/inter-op, OMP/BLAS env); median of {args.repeats} "
             "repetitions after one warm-up view. Per call: rays for all views of a chunk are cast in "
             "one Embree call (embreex, robust mode), then normals (smooth), camera-z depth, mask and a "
             "headlight Lambertian image are computed with numpy. `supersample` 2 casts 2x2 sub-rays "
             "per pixel plus the pixel-centre ray (for depth). Meshes are normalised to radius 0.9; "
             "cameras: Fibonacci sphere, distance 3, fov 40 degrees. `coverage` is the mean mask. "
             "BVH build time is separate (one per mesh).")
    write_report("raycast", "Ground-truth ray casting (Embree) speed", command.strip(),
                 ["mesh", "faces", "resolution", "supersample", "views", "BVH build s", "ms/view",
                  "views/s", "Mrays/s", "coverage"], rows, notes)


if __name__ == "__main__":
    main()
