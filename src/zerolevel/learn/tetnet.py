"""Wu et al.'s single-view network: an RGBA image to signed distances on a fixed tetrahedral grid.

One job: `TetNet`, an image encoder (`encoders.py`, after a stride-2 stem that brings S = 128 inputs
to the encoders' 64; "pix2pix", whose first level halves the image itself, has none) and a 3D
convolutional decoder to the SDF values at the vertices of a regular tet grid
(`geometry.tetgrid.TetGrid.regular`, `grid` cubes per axis over [-bounds, bounds]^3, which holds the
dataset's objects, normalised into [-0.5, 0.5]^3). The decoder:

    code (512) -> Linear -> C0 x (g0 + 1)^3 vertex features, g0 = grid / 2^(L + 1)
    L times: trilinear upsampling vertex lattice to vertex lattice ((n + 1)^3 -> (2n + 1)^3, corners
             aligned, which is exactly the nested lattice of the finer grid), 3x3x3 convolution, ReLU
             (with `norm="group"`, GroupNorm before each ReLU, the code's lattice's included)
    head, on the lattice of the half-resolution grid: two 3x3x3 convolutions, one to a smooth offset
             (one channel, upsampled trilinearly to the grid's lattice) and one to 8 channels, the
             detail of the 8 fine vertices each coarse vertex owns (a 3D pixel shuffle); their sum is
             the offset, in grid cells, from the initial sphere's SDF

so its output starts (head convolutions zero) as the signed distance to a sphere of `init_radius`,
as SoftRas's network starts as its template sphere; every other layer starts by He's rule
(`init="he"`, `he_init`), so the image reaches the head's input at full scale. The head does at half resolution what a
convolved level of the full lattice (`head="conv"`, with one more entry in `channels`) does at 8x
the voxels, for a step two thirds as long and a network that learnt more in the same time
(`benchmarks/results/tetnet_decoder.md`). With `basis` = K > 0 a linear term is added to the
offset: the code's K coefficients times K learnt fields on the full lattice (zero at the start),
detail at the grid's own resolution that the convolutions must otherwise build from the coarse
lattice. With `pixel` = P > 0 each vertex of the finest lattice also reads the image where it projects
in the input camera (`PixelAligned`, as PIFu's pixel-aligned features): the encoder's maps of >= 16^2
pixels, summed at P channels, and the image itself, beside the vertex's depth; the result is added to
the vertex's decoded features before the head. The code then says what the object is and the image
where it is, vertex by vertex (the silhouette's cone without learning it); the price is that the
network needs each input image's camera (`forward(images, cameras)`). The grid's boundary vertices are kept outside
(>= half a cell), so every predicted surface is closed. Marching tetrahedra (`geometry.marching`)
turns each sample's values into a mesh, differentiably in the values (the training's losses reach
the network through it). The vertex lattice is indexed [x, y, z] in the grid's vertex order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras
from ..geometry.marching import PackedMeshes, marching_tetrahedra, marching_tetrahedra_batch
from ..geometry.tetgrid import TetGrid
from .encoders import ENCODERS, LATENT, check_images, config_from_dict, image_trunk


@dataclass
class TetNetConfig:
    """The network's shape."""

    encoder: str = "baseline"       # encoders.py: "baseline", "resnet", "attention", "pix2pix"
    image_size: int = 128           # S; the stem halves it for the encoder
    in_channels: int = 4            # RGBA
    latent: int = LATENT
    grid: int = 32                  # tet grid cubes per axis (a power of two times the coarsest)
    bounds: float = 0.55            # the grid spans [-bounds, bounds]^3 (objects: [-0.5, 0.5]^3)
    channels: tuple[int, ...] = (64, 32, 16)  # decoder features, coarsest lattice to the finest
    head: str = "shuffle"           # the finest lattice: "shuffle" (sub-vertex values from the
                                    # half-resolution lattice) or "conv" (a convolved level of its own)
    init_radius: float = 0.3        # the starting surface: a sphere of this radius
    norm: str = "none"              # the decoder's lattices: "none" or "group" (GroupNorm, 8 groups,
                                    # before each ReLU)
    basis: int = 0                  # > 0: plus a linear term at the grid's own lattice, code ->
                                    # `basis` coefficients -> a learnt field per coefficient (0: none)
    pixel: int = 0                  # > 0: pixel-aligned features (`PixelAligned`, this many channels
                                    # in its image map) added to the decoder's finest lattice's, read
                                    # at each vertex's projection in the input camera (then needed)
    init: str = "he"                # the weights' start: "he" (`he_init`) or "torch" (PyTorch's defaults;
                                    # +0.08 val IoU at 150 iterations for "he": results/tetnet_he_init.md)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)  # a JSON round trip gives a list
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown decoder norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown decoder head {self.head!r}; choose one of {', '.join(HEADS)}")
        halvings = len(self.channels) - 1 + (self.head == "shuffle")
        if self.grid % (1 << halvings) or self.grid < (1 << halvings) or self.image_size < 16:
            raise ValueError(f"grid must be a positive multiple of 2^{halvings} (one halving per decoder "
                             f"level) and image_size >= 16, got {self.grid}, {self.image_size}")
        if not 0 < self.init_radius < self.bounds:
            raise ValueError("need 0 < init_radius < bounds")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.basis < 0 or self.pixel < 0:
            raise ValueError(f"basis and pixel must be >= 0, got {self.basis}, {self.pixel}")

    @classmethod
    def from_dict(cls, data: dict) -> "TetNetConfig":
        """Rebuild from `asdict` output (e.g. read back from a checkpoint); unknown keys are an error."""
        return config_from_dict(cls, data)


HEADS = ("shuffle", "conv")
NORMS = ("none", "group")
INITS = ("torch", "he")


def he_init(network: nn.Module) -> None:
    """He et al.'s start for ReLU networks: every convolution's and linear layer's weights drawn from
    N(0, 2 / fan_in), biases zero, but for layers that start at zero on purpose (the decoder's head).

    PyTorch's default (uniform, variance 1 / (3 fan_in)) shrinks the mean square of the activations
    ~6x per ReLU layer: the encoder's code and the decoder's finest lattice start orders of magnitude
    below their inputs' scale, nearly the same for every image, so the zero-initialised head must grow
    its weights as many times over (thousands of Adam steps) before the image changes the surface.
    He's variance keeps every layer at the scale of its input.
    """
    for module in network.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.weight.any():
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class GridDecoder(nn.Module):
    """(B, latent) code -> (B, (grid + 1)^3) SDF values at the vertices of a regular lattice of `grid`
    cubes per axis over [-bounds, bounds]^3, indexed [x, y, z] (the tet grid's vertex order).

    `config` is any network config with the decoder's settings (latent, grid, bounds, channels, head,
    norm, basis, init_radius): TetNet's, or SDFNet's coarse lattice."""

    def __init__(self, config: TetNetConfig):
        super().__init__()
        channels = config.channels
        self.shuffle = config.head == "shuffle"
        self.coarse = config.grid >> (len(channels) - 1 + self.shuffle)
        self.fc = nn.Linear(config.latent, channels[0] * (self.coarse + 1) ** 3)
        self.convs = nn.ModuleList(nn.Conv3d(a, b, 3, padding=1) for a, b in zip(channels, channels[1:]))
        self.norms = nn.ModuleList(nn.GroupNorm(min(8, c), c) if config.norm == "group" else nn.Identity()
                                   for c in channels)
        self.out = nn.Conv3d(channels[-1], 1, 3, padding=1)
        self.sub = nn.Conv3d(channels[-1], 8, 3, padding=1) if self.shuffle else None
        n = config.grid + 1
        self.basis = None
        if config.basis:  # coefficients, then one learnt field each (zero: the term starts at 0)
            self.basis = nn.Sequential(nn.Linear(config.latent, config.basis), nn.Linear(config.basis, n ** 3, bias=False))
        for conv in (self.out, self.sub, None if self.basis is None else self.basis[1]):
            if conv is not None:
                zero_init(conv)
        self.cell = 2.0 * config.bounds / config.grid
        start, boundary = sphere_lattice(config.grid, config.bounds, config.init_radius)
        self.register_buffer("start", start[None], persistent=False)
        self.register_buffer("floor", boundary_floor(boundary, 0.5 * self.cell)[None], persistent=False)

    @property
    def finest(self) -> int:
        """Vertices per axis of the lattice the head reads (the grid's, or its half's with "shuffle")."""
        return (self.coarse << (len(self.convs))) + 1

    def features(self, code: Tensor) -> Tensor:
        """(B, latent) -> (B, channels[-1], m, m, m) features of the lattice the head reads (m = `finest`)."""
        m = self.coarse + 1
        x = F.relu(self.norms[0](self.fc(code).reshape(len(code), -1, m, m, m)))
        for conv, norm in zip(self.convs, self.norms[1:]):
            x = F.relu(norm(conv(_refine_lattice(x))))
        return x

    def values(self, x: Tensor, code: Tensor) -> Tensor:
        """The head: `features` (and the code, for `basis`) -> (B, (grid + 1)^3) values."""
        offset = self.out(x)
        if self.shuffle:
            offset = _refine_lattice(offset) + _sub_vertices(self.sub(x))
        if self.basis is not None:
            offset = offset + self.basis(code).reshape(offset.shape)
        values = self.start + self.cell * offset[:, 0]
        # boundary vertices stay outside: every surface is closed inside the grid
        values = values.clamp(min=self.floor)
        return values.reshape(len(code), -1)

    def forward(self, code: Tensor, pixel: Tensor | None = None) -> Tensor:
        """code (B, latent), and with `pixel` > 0 the (B, channels[-1], m, m, m) pixel-aligned features
        of the finest lattice (m = `finest`), added to its own -> (B, (grid + 1)^3) values."""
        x = self.features(code)
        return self.values(x if pixel is None else x + pixel, code)


def zero_init(conv: nn.Module) -> None:
    """Weights and bias zero: a head whose output starts at 0 (the starting surface)."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def sphere_lattice(grid: int, bounds: float, radius: float) -> tuple[Tensor, Tensor]:
    """The (grid + 1)^3 lattice over [-bounds, bounds]^3, indexed [x, y, z]: the signed distance to
    the sphere of `radius` at its vertices, and which vertices lie on the box's boundary."""
    axis = torch.linspace(-bounds, bounds, grid + 1)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    index = torch.arange(grid + 1)
    coords = torch.stack(torch.meshgrid(index, index, index, indexing="ij"), dim=-1)
    return points.norm(dim=-1) - radius, ((coords == 0) | (coords == grid)).any(dim=-1)


def boundary_floor(boundary: Tensor, floor: float) -> Tensor:
    """The lower bound of a lattice's values: `floor` on its `boundary` vertices, -inf elsewhere
    (`values.clamp(min=...)` keeps the boundary outside; one pass, cheaper than a where)."""
    return torch.where(boundary, floor, -torch.inf)


def _refine_lattice(x: Tensor) -> Tensor:
    """(B, C, n + 1, n + 1, n + 1) vertex features -> those of the halved grid, (B, C, 2n + 1, ...),
    trilinearly (corners aligned: the finer lattice nests the coarser one). Separably, axis by axis:
    each axis's nodes interleaved with the midpoints between them (F.interpolate's trilinear backward
    is several times slower on 2 cores)."""
    for dim in (2, 3, 4):
        last = x.shape[dim] - 1
        low, high = x.narrow(dim, 0, last), x.narrow(dim, 1, last)
        pairs = torch.stack([low, 0.5 * (low + high)], dim=dim + 1).flatten(dim, dim + 1)
        x = torch.cat([pairs, x.narrow(dim, last, 1)], dim=dim)
    return x


def _sub_vertices(x: Tensor, factor: int = 2) -> Tensor:
    """(B, f^3, m, m, m) -> (B, 1, f (m - 1) + 1, ...), f = `factor`: channel f^2 a + f b + c of coarse
    vertex (i, j, k) is the value of fine vertex (f i + a, f j + b, f k + c) (a 3D pixel shuffle,
    cropped to the fine lattice)."""
    B, _, m = x.shape[:3]
    f = factor
    fine = x.reshape(B, f, f, f, m, m, m).permute(0, 4, 1, 5, 2, 6, 3).reshape(B, 1, f * m, f * m, f * m)
    end = f * (m - 1) + 1
    return fine[..., :end, :end, :end]


def _owned_vertices(x: Tensor) -> Tensor:
    """The inverse of `_sub_vertices` (factor 2): (B, C, 2m - 1, ...) -> (B, 8 C, m, m, m), channel
    8 k + 4 a + 2 b + c of vertex (i, j, k) holding channel k of fine vertex (2i + a, 2j + b, 2k + c)
    (the last vertex's missing neighbours repeat the edge)."""
    B, C, n = x.shape[:3]
    m = (n + 1) // 2
    padded = F.pad(x, (0, 1, 0, 1, 0, 1), mode="replicate")
    return padded.reshape(B, C, m, 2, m, 2, m, 2).permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(B, 8 * C, m, m, m)


class PixelAligned(nn.Module):
    """Pixel-aligned features of a lattice's vertices (as PIFu's), (B, out, m, m, m).

    The encoder's feature maps of >= 16^2 pixels (the last map of each size) are each mapped by a 1x1
    convolution to `channels`, brought to the largest map's size and summed (a feature pyramid's
    top-down sum, in one step), then ReLU. Each vertex reads that map and the input image bilinearly at
    its projection in the input camera (zeros off the image, as the background reads), beside its
    depth relative to the camera's distance to the origin (in `bounds`); a 1x1 convolution and ReLU
    map them to `out`. Sampling a narrow map, not the encoder's wide ones, keeps it cheap.
    """

    def __init__(self, image_channels: int, map_channels: list[int], channels: int, out: int, side: int,
                 bounds: float):
        super().__init__()
        self.bounds, self.side = bounds, side
        axis = torch.linspace(-bounds, bounds, side)
        points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        self.register_buffer("points", points, persistent=False)
        self.laterals = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in map_channels)
        self.mix = nn.Conv1d(image_channels + channels + 1, out, 1)

    @staticmethod
    def pick(maps: list[Tensor]) -> list[Tensor]:
        """The last map of each size >= 16 (an encoder's later maps are too coarse to align)."""
        last: dict[int, Tensor] = {}
        for x in maps:
            if x.shape[-1] >= 16:
                last.pop(x.shape[-1], None)
                last[x.shape[-1]] = x
        return list(last.values())

    def forward(self, images: Tensor, maps: list[Tensor], cameras: Cameras) -> Tensor:
        size = max(x.shape[-1] for x in maps)
        fused = sum(F.interpolate(lateral(x), size=(size, size), mode="bilinear", align_corners=False)
                    for lateral, x in zip(self.laterals, maps))
        cameras = cameras.to(device=self.points.device, dtype=self.points.dtype)
        uv, depth = cameras.project(self.points)  # (B, M, 2), (B, M)
        grid = (2 * uv / uv.new_tensor([cameras.width, cameras.height]) - 1)[:, :, None, :]
        sampled = [F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0]
                   for x in (images, F.relu(fused))]
        relative = (depth - cameras.centers.norm(dim=-1)[:, None]) / self.bounds
        features = F.relu(self.mix(torch.cat([*sampled, relative[:, None]], dim=1)))
        return features.reshape(len(images), -1, self.side, self.side, self.side)


class TetNet(nn.Module):
    """Single-view SDF reconstruction: (B, 4, S, S) RGBA in [0, 1] -> (B, N) SDF values on `grid`.

    `TetNet("resnet")` picks the encoder; other `TetNetConfig` settings are keyword arguments.
    Attributes: `config`, `grid` (the TetGrid every output lives on; its vertices and tets follow
    the network's device through `to`).
    """

    config_class = TetNetConfig

    def __init__(self, encoder: str = "baseline", **settings):
        super().__init__()
        self.config = TetNetConfig(encoder=encoder, **settings)
        c = self.config
        self.grid = TetGrid.regular(c.grid, bounds=(-c.bounds, c.bounds))
        self.stem, self.encoder = image_trunk(c.encoder, c.image_size, c.in_channels, c.latent)
        self.decoder = GridDecoder(c)
        self.pixel = None
        if c.pixel:
            with torch.no_grad():  # the maps' channels, from a dry run of the stem and encoder
                maps = _encoder_maps(self.stem, self.encoder, torch.zeros(2, c.in_channels, c.image_size, c.image_size))[0]
            self.pixel = PixelAligned(c.in_channels, [x.shape[1] for x in PixelAligned.pick(maps)], c.pixel,
                                      c.channels[-1], self.decoder.finest, c.bounds)
        if c.init == "he":
            he_init(self)
        self.register_buffer("grid_vertices", self.grid.vertices.clone(), persistent=False)
        self.register_buffer("grid_tets", self.grid.tets.clone(), persistent=False)

    @classmethod
    def from_config(cls, config: TetNetConfig) -> "TetNet":
        settings = asdict(config)
        return cls(settings.pop("encoder"), **settings)

    @property
    def needs_cameras(self) -> bool:
        """Whether `forward` needs the input images' cameras (pixel-aligned features)."""
        return self.pixel is not None

    def forward(self, images: Tensor, cameras: Cameras | None = None) -> Tensor:
        """(B, C, S, S) images with the configured C and S (and, with pixel-aligned features, their B
        cameras, S x S pixels, in the dataset's world frame) -> (B, N) SDF values at the grid's vertices."""
        c, s = self.config.in_channels, self.config.image_size
        check_images(images, c, s)
        if self.pixel is None:
            return self.decoder(self.encoder(self.stem(images)))
        if cameras is None or len(cameras) != len(images) or (cameras.width, cameras.height) != (s, s):
            raise ValueError(f"this network reads the image at each grid vertex's projection: it needs the "
                             f"{len(images)} input cameras of {s}x{s} pixels")
        maps, code = _encoder_maps(self.stem, self.encoder, images)
        return self.decoder(code, self.pixel(images, PixelAligned.pick(maps), cameras))

    def mesh(self, values: Tensor, return_edges: bool = False) -> tuple[Tensor, ...]:
        """Marching tetrahedra on one sample's (N,) values: vertices, faces (and the grid edge of each
        vertex), differentiable in the values."""
        return marching_tetrahedra(self.grid_vertices, self.grid_tets, values, return_edges=return_edges)

    def meshes(self, values: Tensor) -> PackedMeshes:
        """Marching tetrahedra on a batch's (B, N) values at once: the samples' meshes packed into one
        (`PackedMeshes`), differentiable in the values."""
        return marching_tetrahedra_batch(self.grid_vertices, self.grid_tets, values)

    @torch.no_grad()
    def predict_meshes(self, images: Tensor, cameras: Cameras | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(vertices float64 (M, 3), faces int64 (K, 3)) of each image's predicted surface (the
        images' cameras: needed with pixel-aligned features, else unused)."""
        meshes = []
        for values in self(images, cameras):
            verts, faces = self.mesh(values)
            meshes.append((verts.double().cpu().numpy(), faces.cpu().numpy()))
        return meshes


def _encoder_maps(stem: nn.Module, encoder: nn.Module, images: Tensor) -> tuple[list[Tensor], Tensor]:
    """The stem's map and every map of the encoder's convolutional trunk, and the (B, latent) code."""
    x = stem(images)
    maps = [x]
    for module in encoder.features:
        x = module(x)
        maps.append(x)
    return maps, encoder.head(x)
