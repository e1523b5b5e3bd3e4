"""Speed of NeuS volume rendering (`zerolevel.render.volume`) with its three gradient modes.

4096 rays x 64 samples (plain rays; and 456 SuperNormal patches of 3 x 3 = 4104 rays) through a small
MLP SDF (3 -> 64 -> 64 -> 1, softplus beta 100, NeuS geometric initialisation to a sphere), every ray
inside the bounding sphere so that every sample is evaluated: `analytic` (double back-propagation),
`fd` (6 extra evaluations per sample) and `dfd` (directional finite differences, patches only).
Forward: the render with its graph, as in training; forward + backward: plus `loss.backward()` on a
normal + opacity + eikonal loss. Median of a few runs after a warm-up; ratios against `analytic` of
the same case. If `zerolevel.fields.hashgrid.HashGridSDF` exists it is timed as well.

    python benchmarks/renderers_volume.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from _report import limit_threads, median_time  # benchmarks/ is on sys.path when a script there runs

HERE = Path(__file__).resolve().parent
N_SAMPLES = 64
N_RAYS = 4096
PATCH = 3  # SuperNormal's training patch size


def _mlp_sdf():
    """3 -> 64 -> 64 -> 1 softplus MLP, initialised to the SDF of a sphere of radius 0.5 (NeuS)."""
    import torch
    from torch import nn

    class MLPSDF(nn.Module):
        def __init__(self, hidden: int = 64, radius: float = 0.5):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(3, hidden), nn.Linear(hidden, hidden),
                                         nn.Linear(hidden, 1)])
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for layer in self.layers[:-1]:
                    layer.weight.normal_(0.0, math.sqrt(2) / math.sqrt(layer.out_features), generator=g)
                    layer.bias.zero_()
                last = self.layers[-1]
                last.weight.normal_(math.sqrt(math.pi) / math.sqrt(hidden), 1e-4, generator=g)
                last.bias.fill_(-radius)
            self.act = nn.Softplus(beta=100)

        def forward(self, x):
            for layer in self.layers[:-1]:
                x = self.act(layer(x))
            return self.layers[-1](x)[..., 0]

    return MLPSDF()


def _fields(hashgrid: bool) -> list[tuple[str, object]]:
    fields = [("mlp 3-64-64-1", _mlp_sdf())]
    if not hashgrid:
        return fields
    try:
        from zerolevel.fields.hashgrid import HashGridSDF
    except ImportError:
        return fields
    try:
        fields.append(("hashgrid", HashGridSDF()))
    except Exception as err:  # its constructor may want arguments this benchmark does not know
        print(f"skipping HashGridSDF: {err}", file=sys.stderr)
    return fields


def run(threads: int = 2, repeats: int = 5, hashgrid: bool = True) -> list[dict]:
    """Time every (field, ray layout, gradient mode).

    Returns rows: renderer, case, forward_s, forward_backward_s (median wall-clock seconds),
    forward_cpu_s, forward_backward_cpu_s (median process CPU seconds) and notes (ratios against
    `analytic` of the same field and layout). `hashgrid`: include `HashGridSDF` when it exists.
    """
    limit_threads(threads)
    import torch

    try:
        import zerolevel  # noqa: F401
    except ImportError:  # not installed: use the checkout's src/
        sys.path.insert(0, str(HERE.parent / "src"))
    from zerolevel.cameras import Cameras
    from zerolevel.render.volume import NeuSVariance, volume_render, volume_render_patches

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set once in this process
        pass
    cams = Cameras.look_at([[0.0, 0.0, 3.0]], fov_deg=30, width=256, height=256)
    g = torch.Generator().manual_seed(0)
    # rays / patches in the central 160^2 pixels: all inside the unit sphere, so all 64 samples run
    n_patches = math.ceil(N_RAYS / PATCH**2)
    top_left = torch.randint(48, 208 - PATCH, (n_patches, 2), generator=g)
    uv = torch.randint(48, 208, (N_RAYS, 2), generator=g).float() + 0.5
    origins, directions = cams.rays(uv)
    variance = NeuSVariance(0.5)
    rows = []
    for field_name, field in _fields(hashgrid):
        layouts = {
            f"rays {N_RAYS} x {N_SAMPLES}": (("analytic", "fd"), lambda mode: volume_render(
                field, origins[0], directions[0], variance=variance, n_samples=N_SAMPLES,
                gradient=mode, generator=torch.Generator().manual_seed(1))),
            f"patches {n_patches} x {PATCH}x{PATCH} x {N_SAMPLES}": (
                ("analytic", "fd", "dfd"), lambda mode: volume_render_patches(
                    field, cams, top_left, PATCH, variance=variance, n_samples=N_SAMPLES,
                    gradient=mode, generator=torch.Generator().manual_seed(1))),
        }
        for layout, (modes, render) in layouts.items():
            base = None
            for mode in modes:
                (fwd, fwd_cpu), (both, both_cpu) = _time_mode(render, mode, field, variance, repeats)
                base = base or (fwd, both, fwd_cpu, both_cpu)
                rows.append({
                    "renderer": "volume (NeuS)", "case": f"{field_name} / {layout} / {mode}",
                    "forward_s": round(fwd, 4), "forward_backward_s": round(both, 4),
                    "forward_cpu_s": round(fwd_cpu, 4), "forward_backward_cpu_s": round(both_cpu, 4),
                    "notes": (f"vs analytic: wall x{fwd / base[0]:.2f} forward, x{both / base[1]:.2f} "
                              f"forward+backward; CPU x{fwd_cpu / base[2]:.2f}, "
                              f"x{both_cpu / base[3]:.2f}; {threads} threads, median of {repeats}")})
    return rows


def _time_mode(render, mode: str, field, variance, repeats: int
               ) -> tuple[tuple[float, float], tuple[float, float]]:
    """(wall, CPU) median seconds of the render alone and of render + backward of a
    normal + opacity + eikonal loss."""
    def forward():
        return render(mode)

    def forward_backward():
        out = render(mode)
        loss = ((out["normal"] - 0.5).square().sum(-1).mean() + out["opacity"].mean()
                + out["eikonal"].square().mean())
        field.zero_grad(set_to_none=True)
        variance.zero_grad(set_to_none=True)
        loss.backward()

    return median_time(forward, repeats), median_time(forward_backward, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-hashgrid", action="store_true", help="time the MLP field only")
    args = parser.parse_args(argv)
    keys = ("renderer", "case", "forward_s", "forward_backward_s", "forward_cpu_s",
            "forward_backward_cpu_s", "notes")
    print(" | ".join(keys))
    for row in run(args.threads, args.repeats, hashgrid=not args.no_hashgrid):
        print(" | ".join(str(row[key]) for key in keys), flush=True)


if __name__ == "__main__":
    main()
