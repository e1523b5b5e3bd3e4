"""Speed of the Soft Rasterizer (`zerolevel.render.softras`) on CPU: forward and forward + backward.

Cases follow SoftRas's single-view reconstruction set-up: a 1280-face sphere template (SoftRas's
sphere_642.obj has 1280 faces; here an icosphere, 3 subdivisions, radius 0.5 like its 0.5-scaled
template) seen by 32 cameras of the rendered-ShapeNet ring (`Cameras.ring`, 64^2), silhouettes at
sigma = 1e-4 (SoftRas's training value) and one colour case; and, for the issue's comparison with
PyTorch3D's CPU soft rasteriser (28 s forward + backward for a 20k-face mesh at 256^2), a
20480-face icosphere at 256^2, batch 1. Times are wall-clock seconds, median of `repeats` runs
after one warm-up; the backward pass is of `sum()` of the outputs, w.r.t. vertices (and colours).

    python benchmarks/renderers_softras.py [--threads 2] [--repeats 3]

`run()` returns the rows for `benchmarks/renderers.py`, which aggregates all renderers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cases() -> list[tuple[str, int, int, int, dict, bool, str]]:
    """(case, icosphere subdivisions, views, size, options, colour, note)."""
    return [
        ("silhouette 1280 faces, 32 x 64^2", 3, 32, 64, {"sigma": 1e-4}, False,
         "sigma 1e-4, dist_eps 1e-4 (SoftRenderer default)"),
        ("silhouette 1280 faces, 32 x 64^2, dist_eps 1e-10", 3, 32, 64,
         {"sigma": 1e-4, "dist_eps": 1e-10}, False,
         "SoftRas recon training setting (models.py: dist_eps 1e-10): wider cut-off"),
        ("colour 1280 faces, 32 x 64^2", 3, 32, 64, {"sigma": 1e-5, "gamma": 1e-4}, True,
         "RGB vertex colours, softmax depth aggregation, sigma 1e-5, gamma 1e-4"),
        ("silhouette 20480 faces, 1 x 256^2", 5, 1, 256, {"sigma": 1e-4}, False,
         "sigma 1e-4 (cut-off 3.9 px); PyTorch3D CPU soft rasteriser: 28 s fwd+bwd (issue)"),
        ("colour 20480 faces, 1 x 256^2", 5, 1, 256, {"sigma": 1e-5, "gamma": 1e-4}, True,
         "RGB vertex colours, sigma 1e-5, gamma 1e-4"),
    ]


def run(threads: int = 2, repeats: int = 3) -> list[dict]:
    """Time each case on `threads` torch threads; rows: renderer, case, forward s,
    forward+backward s, notes."""
    import torch
    import trimesh

    try:
        from zerolevel.cameras import Cameras
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(HERE.parent / "src"))
        from zerolevel.cameras import Cameras
    from zerolevel.render.softras import soft_render, soft_silhouette
    from zerolevel.render.softras_scene import build_scene

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for case, subdivisions, views, size, options, colour, note in _cases():
            mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
            base = torch.tensor(mesh.vertices, dtype=torch.float32)
            faces = torch.tensor(mesh.faces)
            cams = Cameras.ring(views, azimuth_step_deg=360 / views, width=size, height=size)
            vertices = base.expand(views, -1, -1).clone().requires_grad_()
            colours = torch.rand(views, len(base), 3, generator=torch.Generator().manual_seed(0))
            colours.requires_grad_()

            def forward() -> torch.Tensor:
                if colour:
                    out = soft_render(vertices, faces, cams, colours, **options)
                    return out["image"].sum() + out["alpha"].sum()
                return soft_silhouette(vertices, faces, cams, **options).sum()

            def forward_only() -> None:
                with torch.no_grad():
                    forward()

            def forward_backward() -> None:
                forward().backward()

            scene = build_scene(vertices.detach(), faces, cams, options["sigma"],
                                options.get("dist_eps", 1e-4))
            pairs = int(scene.starts[-1])
            rows.append({
                "renderer": "softras",
                "case": case,
                "forward s": round(_median_seconds(forward_only, repeats), 4),
                "forward+backward s": round(_median_seconds(forward_backward, repeats), 4),
                "notes": f"{note}; {pairs / 1e6:.2f}M candidate pixel-triangle pairs "
                         f"({pairs / (views * size * size * len(faces)):.2%} of all); "
                         f"{threads} threads, median of {repeats}, load avg {os.getloadavg()[0]:.1f}",
            })
    finally:
        torch.set_num_threads(previous)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))  # before numpy / torch load
    for row in run(args.threads, args.repeats):
        print(" | ".join(str(v) for v in row.values()), flush=True)


if __name__ == "__main__":
    main()
