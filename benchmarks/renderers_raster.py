"""Speed of the differentiable rasteriser (`zerolevel.render.raster`): forward, forward + backward.

Renders a normal map and the antialiased mask (`render_normals`) of meshes normalised to the unit
sphere (radius 0.9, working space) from one camera at distance 3 (40 degree field of view) at 256^2,
and back-propagates a weighted sum of both images to the vertices. Cases: nefertiti (100k faces,
from ../shared/data/meshes when present, else an icosphere of similar size), a 20k-face icosphere
(the issue's comparison: PyTorch3D's CPU rasteriser needs 6.4 s for a 20k-face mesh at 256^2) and a
330k-face icosphere, each with the default z-buffer visibility and with Embree ray casting (BVH
rebuilt every call). Reports the median wall-clock (and process CPU) time of a few repetitions
after a warm-up (edge topology built once per mesh and passed in).

    python benchmarks/renderers_raster.py [--threads 2] [--repeats 5]

`run(threads)` returns the rows; `benchmarks/renderers.py` aggregates them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _report import median_time  # benchmarks/ is on sys.path when a script there runs

HERE = Path(__file__).resolve().parent
PYTORCH3D_CPU_20K_256 = 6.4  # seconds, the figure for PyTorch3D's CPU rasteriser


def run(threads: int = 2, repeats: int = 5, size: int = 256) -> list[dict]:
    """Time `render_normals` forward and forward + backward; one row per case and visibility method.

    Returns:
        dicts with renderer, case, forward_s, forward_backward_s (median wall-clock seconds) and
        notes (faces, resolution, threads, covered pixels, CPU seconds, and for the 20k case the
        speed-up over PyTorch3D's CPU rasteriser).
    """
    import numpy as np
    import torch
    import trimesh

    try:
        from zerolevel.cameras import Cameras
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(HERE.parent / "src"))
        from zerolevel.cameras import Cameras
    from zerolevel.geometry.mesh import load_mesh, transform_mesh, unit_sphere_transform
    from zerolevel.render import raster
    from zerolevel.render.antialias import edge_topology

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        nefertiti = HERE.parents[1] / "shared" / "data" / "meshes" / "nefertiti.obj"
        if nefertiti.is_file():
            big = ("nefertiti", load_mesh(nefertiti))
        else:  # a stand-in of similar size (82k faces)
            big = ("icosphere(sub=6)", trimesh.creation.icosphere(subdivisions=6))
        cases = [big, ("icosphere(sub=5)", trimesh.creation.icosphere(subdivisions=5)),
                 ("icosphere(sub=7)", trimesh.creation.icosphere(subdivisions=7))]
        cams = Cameras.sphere(3, distance=3.0, fov_deg=40, width=size, height=size)[1:2]
        rng = np.random.default_rng(0)
        w_normal = torch.tensor(rng.normal(size=(1, size, size, 3)), dtype=torch.float32)
        w_mask = torch.tensor(rng.normal(size=(1, size, size)), dtype=torch.float32)
        rows = []
        for name, mesh in cases:
            mesh = transform_mesh(mesh, np.linalg.inv(unit_sphere_transform(mesh)))
            v = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32)
            f = torch.tensor(np.asarray(mesh.faces))
            topology = edge_topology(f)  # the faces stay the same over the repeats: built once
            for method in ("zbuffer", "embree"):
                def forward():
                    x = v.clone().requires_grad_(True)
                    return x, raster.render_normals(x, f, cams, visibility=method, topology=topology)

                def forward_backward():
                    x, out = forward()
                    ((w_normal * out["normal"]).sum() + (w_mask * out["mask"]).sum()).backward()

                fwd, fwd_cpu = median_time(forward, repeats)
                fb, fb_cpu = median_time(forward_backward, repeats)
                covered = int(raster.rasterize(v, f, cams).face.ge(0).sum())
                notes = (f"{len(mesh.faces)} faces, {size}^2, 1 view, {covered} covered pixels, "
                         f"{threads} threads; CPU s: forward {fwd_cpu:.3f}, "
                         f"forward+backward {fb_cpu:.3f}")
                if "sub=5" in name:
                    notes += (f"; PyTorch3D CPU: {PYTORCH3D_CPU_20K_256} s for 20k faces at 256^2, "
                              f"i.e. {PYTORCH3D_CPU_20K_256 / fb:.0f}x slower than this "
                              f"forward+backward")
                rows.append({"renderer": f"raster ({method} visibility, antialiased)",
                             "case": name, "forward_s": round(fwd, 4),
                             "forward_backward_s": round(fb, 4), "notes": notes})
        return rows
    finally:
        torch.set_num_threads(old_threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    for row in run(args.threads, args.repeats):
        print(f"{row['renderer']:<42} {row['case']:<18} forward {row['forward_s']:.4f} s  "
              f"forward+backward {row['forward_backward_s']:.4f} s  | {row['notes']}")


if __name__ == "__main__":
    main()
