"""The fast default multi-view fit: SDFDiff's dense lattice and sphere tracing, started from the
masks' visual hull and kept within it, coarse to fine by elapsed time.

What it changes from SDFDiff (`recon.sdfdiff`, whose machinery it is) and why, each measured in
`benchmarks/fit_speed.py`:
- the lattice starts as the visual hull's signed distance (`geometry.visual_hull.hull_signed_distance`,
  sub-pixel), not a sphere: thin walls, holes and handles are there from the first step, where a
  sphere can neither grow a plate thinner than a coarse cell nor open a hole;
- a hull bound (`w_hull`) pulls in, at every lattice node, whatever pokes out of the hull, so the
  silhouettes are right everywhere rather than where a ray happens to be sampled;
- levels 32^3 to 128^3 (SDFDiff's start at 16^3 grows a sphere; the hull needs no growing, but
  the large steps of the coarse levels still carve concavities the silhouettes cannot);
- the regularisers at 65536 random nodes near the surface per step, not at every node: the
  finest level's steps cost half as much;
- with `--budget`, the levels and learning-rate decay follow the time spent (`LevelledFit.set_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .sdfdiff import SDFDiff, SDFDiffConfig, mesh_from_state

__all__ = ["DenseFit", "DenseFitConfig", "mesh_from_state"]


@dataclass
class DenseFitConfig(SDFDiffConfig):
    """SDFDiff's settings with the defaults of the fast fit (module docstring)."""

    resolutions: tuple[int, ...] = (32, 48, 64, 96, 128)
    init: str = "hull"
    w_hull: float = 1.0
    regulariser_nodes: int = 65536


class DenseFit(SDFDiff):
    """The default fit (`zerolevel fit SCENE`): `SDFDiff` with `DenseFitConfig`."""

    name = "dense"

    def __init__(self, scene, iters, config: DenseFitConfig | None = None, device="cpu", seed: int = 0,
                 source: str = "scene"):
        super().__init__(scene, iters, config or DenseFitConfig(), device, seed, source)
