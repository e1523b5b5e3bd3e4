"""SDFDiff's single-view network: an RGBA image to a coarse SDF lattice, refined to a finer one.

One job: `SDFNet`, an image encoder (`encoders.py`, as TetNet's: a stride-2 stem to the encoders'
64^2, none for "pix2pix") and two lattices of signed distances over [-bounds, bounds]^3 (the
dataset's objects lie in [-0.5, 0.5]^3), nodes on the box, indexed [x, y, z]:

- coarse, `grid` cells per axis ((grid + 1)^3 nodes): TetNet's decoder (`tetnet.GridDecoder`: a
  linear layer to a small lattice, trilinear x2 + 3^3 convolution levels, a sub-vertex head), starting
  as the signed distance to a sphere of `init_radius` (its head is zero at the start);
- fine, 2 grid cells per axis: the refinement network. The decoder's features (the lattice its head
  reads, half the coarse resolution) are brought to the coarse lattice (trilinear x2) beside the
  coarse values themselves (in cells); one 3^3 convolution and ReLU, then a head like the decoder's,
  one level up: a smooth offset (upsampled) plus the 8 sub-nodes each coarse node owns (a 3D pixel
  shuffle), in fine cells, added to the coarse lattice upsampled trilinearly. Its head starts at zero,
  so the untrained fine lattice is exactly the coarse one, upsampled: training coarse alone first and
  then both (the seed's coarse-to-fine) starts the fine level where the coarse one stands.

Boundary nodes of both lattices are kept outside (>= half a cell): every surface is closed in the box.
The lattices are rendered by `render.lattice_trace` (differentiable sphere tracing, SDFDiff's); a
mesh is marching cubes of a lattice (`geometry.extract.mesh_from_grid`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry.extract import mesh_from_grid
from .encoders import ENCODERS, LATENT, check_images, config_from_dict, image_trunk
from .tetnet import (GridDecoder, _owned_vertices, _refine_lattice, _sub_vertices, boundary_floor, he_init,
                     sphere_lattice, zero_init)

LEVELS = ("coarse", "fine")


@dataclass
class SDFNetConfig:
    """The network's shape."""

    encoder: str = "baseline"       # encoders.py: "baseline", "resnet", "attention", "pix2pix"
    image_size: int = 128           # S; the stem halves it for the encoder
    in_channels: int = 4            # RGBA
    latent: int = LATENT
    grid: int = 32                  # coarse lattice cells per axis; the fine lattice has twice as many
    bounds: float = 0.55            # the lattices span [-bounds, bounds]^3 (objects: [-0.5, 0.5]^3)
    channels: tuple[int, ...] = (64, 32, 16)  # the coarse decoder's features (tetnet.GridDecoder)
    refine: int = 16                # the refinement network's features (on the decoder's lattice)
    init_radius: float = 0.3        # the starting surface: a sphere of this radius
    init: str = "he"                # "he" (tetnet.he_init) or "torch" (PyTorch's defaults)
    head: str = "shuffle"           # the coarse decoder's head (fixed: tetnet.GridDecoder's sub-vertex head)
    norm: str = "none"              # the coarse decoder's normalisation (fixed)
    basis: int = 0                  # (fixed: the coarse decoder has no linear full-lattice term)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)  # a JSON round trip gives a list
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if (self.head, self.norm, self.basis) != ("shuffle", "none", 0):
            raise ValueError("SDFNet's coarse decoder is the shuffle head without norm or basis")
        if self.grid % (1 << len(self.channels)) or self.grid < (1 << len(self.channels)) or self.image_size < 16:
            raise ValueError(f"grid must be a positive multiple of 2^{len(self.channels)} (one halving per "
                             f"decoder level) and image_size >= 16, got {self.grid}, {self.image_size}")
        if not 0 < self.init_radius < self.bounds:
            raise ValueError("need 0 < init_radius < bounds")
        if self.refine < 1:
            raise ValueError(f"refine must be >= 1 feature, got {self.refine}")
        if self.init not in ("he", "torch"):
            raise ValueError(f"unknown init {self.init!r}; choose he or torch")

    @classmethod
    def from_dict(cls, data: dict) -> "SDFNetConfig":
        """Rebuild from `asdict` output (e.g. read back from a checkpoint); unknown keys are an error."""
        return config_from_dict(cls, data)

    def cells(self, level: str) -> int:
        """Cells per axis of a level's lattice."""
        return self.grid * (2 if level == "fine" else 1)


class Refiner(nn.Module):
    """(coarse values (B, n, n, n), decoder features (B, C, m, m, m), n = 2m - 1) -> fine values
    (B, 2n - 1, ...): on the decoder's lattice (m^3 nodes), its features beside the 8 coarse values
    each node owns (in coarse cells), one 3^3 convolution and ReLU, and a 1x1 head to the 4^3 fine
    nodes each node owns (a 3D pixel shuffle), in fine cells, added to the coarse lattice upsampled."""

    def __init__(self, config: SDFNetConfig):
        super().__init__()
        self.conv = nn.Conv3d(config.channels[-1] + 8, config.refine, 3, padding=1)
        self.sub = nn.Conv3d(config.refine, 64, 1)
        zero_init(self.sub)
        self.coarse_cell = 2.0 * config.bounds / config.grid
        self.cell = self.coarse_cell / 2
        _, boundary = sphere_lattice(2 * config.grid, config.bounds, config.init_radius)
        self.register_buffer("floor", boundary_floor(boundary, 0.5 * self.cell)[None], persistent=False)

    def forward(self, coarse: Tensor, features: Tensor) -> Tensor:
        x = torch.cat([features, _owned_vertices(coarse[:, None] / self.coarse_cell)], dim=1)
        offset = _sub_vertices(self.sub(F.relu(self.conv(x))), factor=4)
        values = (_refine_lattice(coarse[:, None]) + self.cell * offset)[:, 0]
        return values.clamp(min=self.floor)


class SDFNet(nn.Module):
    """Single-view SDF lattices: (B, 4, S, S) RGBA in [0, 1] -> a coarse (B, n, n, n) and a fine
    (B, 2n - 1, ...) lattice.

    `SDFNet("resnet")` picks the encoder; other `SDFNetConfig` settings are keyword arguments.
    `level` ("fine" by default) is the lattice `predict_meshes` extracts.
    """

    config_class = SDFNetConfig

    def __init__(self, encoder: str = "baseline", **settings):
        super().__init__()
        self.config = SDFNetConfig(encoder=encoder, **settings)
        c = self.config
        self.stem, self.encoder = image_trunk(c.encoder, c.image_size, c.in_channels, c.latent)
        self.decoder = GridDecoder(c)
        self.refiner = Refiner(c)
        if c.init == "he":
            he_init(self)
        self.level = "fine"

    @classmethod
    def from_config(cls, config: SDFNetConfig) -> "SDFNet":
        settings = asdict(config)
        return cls(settings.pop("encoder"), **settings)

    def forward(self, images: Tensor, cameras=None, levels: tuple[str, ...] | None = None
                ) -> Tensor | dict[str, Tensor]:
        """(B, C, S, S) images -> the (B, N) values of the `level` lattice, flattened [x, y, z] (the raw
        output `predict` fuses and meshes, as TetNet's); with `levels`, a dict of those levels'
        (B, n, n, n) lattices ("coarse" and / or "fine": training). `cameras` unused (the lattices live
        in the dataset's world frame, whatever the view)."""
        c = self.config
        check_images(images, c.in_channels, c.image_size)
        wanted = (self.level,) if levels is None else levels
        code = self.encoder(self.stem(images))
        features = self.decoder.features(code)
        n = c.grid + 1
        coarse = self.decoder.values(features, code).reshape(-1, n, n, n)
        out = {"coarse": coarse} if "coarse" in wanted else {}
        if "fine" in wanted:
            out["fine"] = self.refiner(coarse, features)
        return out if levels is not None else out[self.level].reshape(len(images), -1)

    def mesh(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """Marching cubes of one sample's (N,) `level` values: vertices (M, 3), faces (K, 3) (empty when
        the lattice holds no surface)."""
        n = self.config.cells(self.level) + 1
        lattice = values.detach().double().cpu().numpy().reshape(n, n, n)
        if lattice.min() >= 0 or lattice.max() <= 0:
            return values.new_zeros((0, 3)), torch.zeros((0, 3), dtype=torch.long, device=values.device)
        b = self.config.bounds
        mesh = mesh_from_grid(lattice, ((-b,) * 3, (b,) * 3))
        return (torch.as_tensor(np.asarray(mesh.vertices), dtype=values.dtype, device=values.device),
                torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long, device=values.device))

    @torch.no_grad()
    def predict_meshes(self, images: Tensor, cameras=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(vertices float64 (M, 3), faces int64 (K, 3)) of each image's surface: marching cubes of its
        `level` lattice."""
        meshes = []
        for values in self(images):
            verts, faces = self.mesh(values)
            meshes.append((verts.double().cpu().numpy(), faces.cpu().numpy()))
        return meshes
