"""Speed of the scene pre-checks (`zerolevel.recon.checks.check_scene`) that run before every fit.

Renders the example mesh (Spot) with the ground-truth ray caster from N views on a sphere (the
`zerolevel render` defaults otherwise) at each resolution, then times `check_scene` on the good
scene and on one with a mask shifted by a tenth of the image width (the hull check then carves
again without that view, its slowest path). Reports the median wall-clock (and process CPU) time
of a few repetitions after a warm-up and writes `benchmarks/results/checks.{md,json}`. The module
docstring of `recon/checks.py` promises well under a second for 32 views at 256^2.

    python benchmarks/checks.py [--threads 2] [--repeats 5] [--views 32] [--resolutions 128 256]
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
from pathlib import Path

from _report import limit_threads, median_time, write_report  # benchmarks/ is on sys.path

HERE = Path(__file__).resolve().parent


def _cases(scene) -> list[tuple[str, object]]:
    """The good scene and a copy whose last view's mask is shifted by a tenth of its width."""
    import copy

    import numpy as np

    shifted = copy.deepcopy(scene)
    view = shifted.views[-1]
    view.mask = np.roll(view.mask, view.width // 10, axis=1)
    view.normal = None
    return [("good scene", scene), ("one mask shifted", shifted)]


def run(views: int, resolutions: list[int], repeats: int) -> list[list]:
    """One row per resolution and case: views, resolution, case, median wall / CPU seconds, outcome."""
    try:
        import zerolevel  # noqa: F401
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(HERE.parent / "src"))
    from zerolevel.data import example_mesh_path
    from zerolevel.errors import InputError
    from zerolevel.geometry.mesh import load_mesh
    from zerolevel.pipeline import render_scene
    from zerolevel.recon.checks import check_scene

    mesh = load_mesh(example_mesh_path())
    rows = []
    for size in resolutions:
        scene = render_scene(mesh, views=views, resolution=size, progress=False)
        for case, checked in _cases(scene):
            checks = functools.partial(_outcome, check_scene, InputError, checked)
            outcome = checks()
            wall, cpu = median_time(checks, repeats)
            rows.append([views, f"{size}^2", case, round(wall, 4), round(cpu, 4), outcome])
            print(" | ".join(str(v) for v in rows[-1]), flush=True)
    return rows


def _outcome(check_scene, error: type, scene) -> str:
    """Run the checks once; what they found ("N warnings" or the error a bad scene raises)."""
    try:
        return f"{len(check_scene(scene, 'scene'))} warnings"
    except error:
        return error.__name__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args(argv)
    limit_threads(args.threads)

    import torch

    torch.set_num_threads(args.threads)
    rows = run(args.views, args.resolutions, args.repeats)
    command = "python benchmarks/checks.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    notes = (f"{args.threads} threads (torch, OMP/BLAS env); median of {args.repeats} repetitions "
             "after one warm-up. Scene: Spot rendered by `zerolevel.pipeline.render_scene` (Fibonacci "
             "sphere, distance 3, 45 degree field of view, normals and 2x2 supersampled masks); the "
             "shifted case rolls the last view's mask by a tenth of the width and drops its normals. "
             "Checks: normals facing the cameras, masks inside the unit sphere's projection, "
             "leave-one-out visual-hull agreement on a 48^3 grid. Rendering is not timed.")
    write_report("checks", "Scene pre-check speed (check_scene)", command.strip(),
                 ["views", "resolution", "case", "wall s", "CPU s", "outcome"], rows, notes)


if __name__ == "__main__":
    main()
