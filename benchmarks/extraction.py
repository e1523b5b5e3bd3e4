"""Mesh extraction speed: dense marching cubes vs the narrow band, on an analytic SDF and a small MLP.

Usage:
    python benchmarks/extraction.py                 # 256^3 dense + narrow band, 512^3 narrow band
    python benchmarks/extraction.py --dense-512     # also the dense 512^3 MLP run (about a minute)

Fields (working space [-1, 1]^3):
- sphere: `SphereSDF`, radius 0.5, slightly off-centre.
- mlp: |x| - 0.5 + MLP(x), MLP 3 -> 64 -> 64 -> 1 with softplus (beta 10), random weights
  (first layer x6, last layer x0.2): a bumpy closed surface with |grad f| up to ~1.2, a stand-in
  for a fitted network of the size the single-view and multi-view methods use.
Writes benchmarks/results/extraction.md and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_report  # noqa: E402

from zerolevel.fields.analytic import SphereSDF  # noqa: E402
from zerolevel.geometry.extract import marching_cubes  # noqa: E402
from zerolevel.geometry.narrowband import marching_cubes_narrow_band  # noqa: E402


class BumpySphereMLP(torch.nn.Module):
    """|x| - radius + MLP(x): a random but closed surface; (N, 3) -> (N,)."""

    def __init__(self, width: int = 64, radius: float = 0.5, seed: int = 0):
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, width), torch.nn.Softplus(beta=10),
            torch.nn.Linear(width, width), torch.nn.Softplus(beta=10),
            torch.nn.Linear(width, 1))
        torch.random.set_rng_state(generator_state)
        with torch.no_grad():
            self.net[0].weight.mul_(6.0)  # higher-frequency bumps than the default init
            self.net[0].bias.mul_(6.0)
            self.net[-1].weight.mul_(0.2)  # amplitude: keeps |grad f| <= ~1.2
            self.net[-1].bias.zero_()
        self.radius = torch.nn.Parameter(torch.tensor(radius))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return points.norm(dim=-1) - self.radius + self.net(points).squeeze(-1)


def max_gradient_norm(field: torch.nn.Module, samples: int = 200_000) -> float:
    """Largest |grad f| over uniform samples of [-1, 1]^3 (what `lipschitz` must bound)."""
    points = (torch.rand(samples, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    points.requires_grad_(True)
    (grad,) = torch.autograd.grad(field(points).sum(), points)
    return float(grad.norm(dim=-1).max())


def timed(extract, field, n, quick: float = 10.0):
    """Seconds of `extract(field, n)`: the median of 3 runs when one takes under `quick` seconds."""
    times = []
    while True:
        start = time.perf_counter()
        mesh = extract(field, n)
        times.append(time.perf_counter() - start)
        if len(times) == 3 or times[0] >= quick:
            return float(np.median(times)), mesh, len(times)


def same_mesh(a, b) -> bool:
    if len(a.faces) != len(b.faces) or len(a.vertices) != len(b.vertices):
        return False
    va = a.vertices[np.lexsort(a.vertices.T[::-1])]
    vb = b.vertices[np.lexsort(b.vertices.T[::-1])]
    return bool(np.abs(va - vb).max() <= 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense-512", action="store_true", help="also run the dense 512^3 MLP")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    fields = {"sphere": SphereSDF((0.03, -0.02, 0.01), 0.5), "mlp": BumpySphereMLP()}
    gradient = max_gradient_norm(fields["mlp"])
    for extract in (marching_cubes, marching_cubes_narrow_band):  # warm-up: first-call costs
        extract(fields["mlp"], 64)

    rows = []
    for name, field in fields.items():
        for n in (256, 512):
            runs = [("narrow band", marching_cubes_narrow_band)]
            if n == 256 or name == "sphere" or args.dense_512:
                runs.insert(0, ("dense", marching_cubes))
            meshes = {}
            for method, extract in runs:
                seconds, mesh, repeats = timed(extract, field, n)
                meshes[method] = mesh
                evaluations = mesh.metadata["field_evaluations"]
                same = "-" if method == "dense" or "dense" not in meshes else \
                    ("yes" if same_mesh(mesh, meshes["dense"]) else "NO")
                rows.append([name, n, method, round(seconds, 2), repeats, evaluations,
                             round(100.0 * evaluations / n**3, 2), len(mesh.faces), same])
                print(rows[-1], flush=True)

    notes = (f"Wall-clock seconds for the whole call (field evaluation, marching cubes, vertex "
             f"merge): median of 3 runs when one takes under 10 s, else one run ('runs'); "
             f"torch {torch.__version__} with {args.threads} intra-op threads. "
             f"Narrow band defaults: lipschitz 1.5, block_size 4, coarse_resolution 16. "
             f"'same as dense': equal face counts and sorted vertices equal within 1e-6. "
             f"mlp: |x| - 0.5 + MLP 3-64-64-1 (softplus), max |grad f| = {gradient:.3f} on 200k "
             f"uniform samples. "
             + ("" if args.dense_512 else "The dense 512^3 MLP run is skipped by default "
                "(134M evaluations, one to a few minutes); pass --dense-512 to include it."))
    command = "python benchmarks/extraction.py" + (" --dense-512" if args.dense_512 else "")
    write_report("extraction", "Mesh extraction: dense marching cubes vs narrow band", command,
                 ["field", "resolution", "method", "seconds", "runs", "field evaluations", "% of n^3",
                  "faces", "same as dense"], rows, notes=notes)


if __name__ == "__main__":
    main()
