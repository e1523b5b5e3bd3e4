"""Speed of the sphere tracer (`zerolevel.render.spheretrace`) on dense SDF grids of Spot.

Renders one 256^2 view of Spot (normalised to radius 0.9, camera at distance 3 with a 40 degree
field of view, so the object covers about a fifth of the image) from a `DenseGridSDF` built from
the mesh at 64^3 and 128^3:
  - forward: `render_sdf` under `torch.no_grad()` (mask, depth, normals, image, soft mask);
  - forward + backward: `render_sdf` with autograd, a loss on normals (inside the ground-truth
    mask) and on the soft mask, then `loss.backward()` into the grid values.
Median of a few repetitions after a warm-up. Reference point (the issue's target): Mitsuba 3's
`sdfgrid` in `llvm_ad_rgb` on a 64^3 grid at 256^2 with 4 samples per pixel, ~0.07 s forward and
~0.33 s forward + backward; we trace 1 ray per pixel.

    python benchmarks/renderers_spheretrace.py              # 2 threads
    python benchmarks/renderers_spheretrace.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _report import limit_threads, median_time  # benchmarks/ is on sys.path when a script there runs

HERE = Path(__file__).resolve().parent


def run(threads: int = 2, repeats: int = 5, size: int = 256,
        resolutions: tuple[int, ...] = (128, 64)) -> list[dict]:
    """Time forward and forward + backward sphere tracing of Spot grids; one row per grid.

    Returns rows with keys renderer, case, resolution, forward_s, forward_backward_s, notes.
    """
    import numpy as np
    import torch

    try:
        import zerolevel  # noqa: F401
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(HERE.parent / "src"))
    from zerolevel.cameras import Cameras
    from zerolevel.data import example_mesh_path
    from zerolevel.fields.grid import DenseGridSDF
    from zerolevel.geometry.mesh import load_mesh, transform_mesh, unit_sphere_transform
    from zerolevel.render.raycast import render_mesh
    from zerolevel.render.spheretrace import render_sdf

    torch.set_num_threads(threads)
    mesh = load_mesh(example_mesh_path())
    mesh = transform_mesh(mesh, np.linalg.inv(unit_sphere_transform(mesh)))
    cams = Cameras.look_at((1.8, 0.9, -2.2), fov_deg=40, width=size, height=size)
    gt = render_mesh(mesh, cams)
    target_normal = torch.as_tensor(gt["normal"])
    target_mask = torch.as_tensor(gt["mask"])

    rows = [_mitsuba_scene_row(threads, repeats, size)]
    for resolution in resolutions:
        start = time.perf_counter()
        grid = DenseGridSDF.from_mesh(mesh, resolution)
        build = time.perf_counter() - start

        def forward():
            with torch.no_grad():
                return render_sdf(grid, cams)

        def forward_backward():
            grid.zero_grad(set_to_none=True)
            out = render_sdf(grid, cams)
            both = (out["mask"] & (target_mask > 0.5)).to(out["normal"].dtype)
            loss = (((out["normal"] - target_normal) ** 2).sum(-1) * both).mean()
            loss = loss + ((out["soft_mask"] - target_mask) ** 2).mean()
            loss.backward()

        out = forward()
        fwd, fwd_cpu = median_time(forward, repeats)
        fwd_bwd, fwd_bwd_cpu = median_time(forward_backward, repeats)
        mask = out["mask"]
        marched = out["steps"][out["steps"] > 0]
        rows.append(_batch_row(grid, mesh, resolution, threads, repeats))
        rows.insert(-1, {
            "renderer": "spheretrace", "case": f"spot DenseGridSDF {resolution}^3",
            "resolution": f"{size}^2", "forward_s": round(fwd, 4), "forward_backward_s": round(fwd_bwd, 4),
            "notes": (f"{threads} threads, 1 ray/pixel, median of {repeats} (process CPU s: forward "
                      f"{fwd_cpu:.4f}, forward+backward {fwd_bwd_cpu:.4f}); coverage "
                      f"{float(mask.float().mean()):.3f}, march steps per ray meeting the unit "
                      f"sphere mean {float(marched.float().mean()):.1f}, max {int(marched.max())}; "
                      f"loss on normals + soft mask; grid built from the mesh in {build:.1f} s"),
        })
    return rows


def _mitsuba_scene_row(threads: int, repeats: int, size: int) -> dict:
    """The scene `renderers_mitsuba.py` renders: a 64^3 grid of a 0.6 sphere, camera at distance 3."""
    import torch

    from zerolevel.cameras import Cameras
    from zerolevel.fields.analytic import SphereSDF
    from zerolevel.fields.grid import DenseGridSDF
    from zerolevel.render.spheretrace import render_sdf

    grid = DenseGridSDF.from_function(SphereSDF(radius=0.6), 64)
    cams = Cameras.look_at((0.0, 0.0, 3.0), fov_deg=45, width=size, height=size)

    def forward(soft: bool = True):
        with torch.no_grad():
            return render_sdf(grid, cams, soft=soft)

    def forward_backward():
        grid.zero_grad(set_to_none=True)
        out = render_sdf(grid, cams)
        loss = ((out["image"] - 0.5) ** 2).mean() + ((out["soft_mask"] - 0.5) ** 2).mean()
        loss.backward()

    fwd, _ = median_time(forward, repeats)
    display, _ = median_time(lambda: forward(soft=False), repeats)
    fwd_bwd, _ = median_time(forward_backward, repeats)
    return {"renderer": "spheretrace", "case": f"64^3 grid of a sphere (Mitsuba's scene), {size}^2, 1 ray/pixel",
            "forward_s": round(fwd, 4), "forward_backward_s": round(fwd_bwd, 4),
            "notes": (f"{threads} threads, median of {repeats}; forward without the soft silhouette "
                      f"(display render, soft=False): {display:.4f} s; loss on image + soft mask")}


def _batch_row(grid, mesh, resolution: int, threads: int, repeats: int) -> dict:
    """A training-style batch: 12288 random pixels of 8 views (1536 each), forward + backward."""
    import torch

    from zerolevel.cameras import Cameras
    from zerolevel.render.raycast import render_mesh
    from zerolevel.render.spheretrace import render_sdf

    cams = Cameras.sphere(8, distance=3.0, fov_deg=40, width=256, height=256)
    target = torch.as_tensor(render_mesh(mesh, cams)["mask"])
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (8, 1536, 2), generator=g)
    uv = pixels.float() + 0.5
    target = target[torch.arange(8)[:, None], pixels[..., 1], pixels[..., 0]]

    def forward_backward():
        grid.zero_grad(set_to_none=True)
        out = render_sdf(grid, cams, uv=uv)
        loss = ((out["soft_mask"] - target) ** 2).mean() + out["normal"].square().mean()
        loss.backward()

    def forward():
        with torch.no_grad():
            render_sdf(grid, cams, uv=uv)

    fwd, fwd_cpu = median_time(forward, repeats)
    fwd_bwd, fwd_bwd_cpu = median_time(forward_backward, repeats)
    return {"renderer": "spheretrace", "case": f"spot DenseGridSDF {resolution}^3, 12288 random rays "
            "(8 views x 1536)", "resolution": "256^2", "forward_s": round(fwd, 4),
            "forward_backward_s": round(fwd_bwd, 4),
            "notes": (f"{threads} threads, median of {repeats} (process CPU s: forward {fwd_cpu:.4f}, "
                      f"forward+backward {fwd_bwd_cpu:.4f}); a training iteration's batch")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    for row in run(args.threads, args.repeats):
        print(" | ".join(str(v) for v in row.values()), flush=True)


if __name__ == "__main__":
    main()
