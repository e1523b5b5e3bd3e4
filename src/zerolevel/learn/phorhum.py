"""PHORHUM's network as the thesis adapts it to heads: one RGB image (and its mask) to a signed distance
and an albedo at any 3D point, and a shading network for the image's light.

One job: `PhorhumNet`, the function (image, camera, points) -> (signed distance, albedo), and its
shading network; the losses and training are `phorhum_train.py`'s.

    image (B, 4, S, S) RGB + mask ──U-Net──> features (B, C, S/2, S/2) ─┐ bilinear at the point's
                              └─bottleneck─> illumination code (B, Z)   │ projection
    point x (world) ──> q = R x (the world point in the camera's axes) ─┴─> MLP(PE(q), feature)
                                                                          -> (d, albedo)
    shading: S(n, code) -> RGB shading; colour = albedo * shading

- U-Net (the thesis's: conv layers from 64 to 512 filters, blur-pool down, bilinear up, concatenated
  skips, 256-d features): `channels` per level, two 3x3 convs (GroupNorm, SiLU) per level, a [1 2 1]^2
  blur before each stride-2 subsampling (blur-pool), bilinear upsampling, concatenated skips, `features`
  channels out at half the image size. Sized for 2 CPU cores: (24, 48, 96, 192) and 64 features
  (the thesis's 64..512 and 256 cost ~30x the multiply-adds).
- Pixel-aligned sampling: the feature map bilinearly at the point's projection (zeros outside).
- NeRF positional encoding of q with `frequencies` octaves: q, sin(2^k pi q), cos(2^k pi q). q is the
  head-frame point in the camera's axes, so what the image shows and the coordinates agree whatever
  the camera's yaw; the camera's distance does not enter (the projection carries it).
- SDF + albedo MLP (the thesis: 8 x 512 Swish with an additive skip): `depth` layers of `width` SiLU
  with the input added back halfway through, then d (1) and albedo (3, sigmoid). The distance is
  a residual over a prior's, d = base(x) + mlp, so the untrained network already has a surface in
  front of every camera (the SDF networks' geometric initialisation, here for a network whose input
  is an image). `base`: "mean_head" (default), the head model's mean head
  (`heads.mean_head_sdf`, trilinear on its lattice; outside the lattice's box, the box's value plus
  the distance to the box), so that the network learns each head's offsets from the mean rather than
  a head from a ball; or "sphere", |x| - `sphere_radius` (the first design; checkpoints without the
  setting are read as it).
- Illumination code: the bottleneck's mean over the image, a linear map to `light_code` numbers; the
  shading network: (unit normal, code) -> 2 layers of 64 SiLU -> softplus RGB shading.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cameras import Cameras
from .encoders import check_images, config_from_dict
from .heads import lattice_distance, mean_head_sdf


@dataclass
class PhorhumNetConfig:
    """The network's shape."""

    image_size: int = 128                       # S: a multiple of 2^len(channels)
    in_channels: int = 4                        # RGB + mask
    channels: tuple[int, ...] = (24, 48, 96, 192)  # U-Net widths per level (each halves the size)
    features: int = 64                          # pixel-aligned feature channels (at S/2)
    frequencies: int = 6                        # positional-encoding octaves
    width: int = 128                            # MLP width ...
    depth: int = 6                              # ... and layers
    light_code: int = 16                        # illumination code size
    base: str = "mean_head"                     # the distance's prior: "mean_head" or "sphere"
    sphere_radius: float = 0.3                  # the "sphere" prior's radius (head units)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        levels = len(self.channels)
        if levels < 2 or self.image_size % (1 << levels) or min(self.channels) < 1:
            raise ValueError(f"need at least 2 positive channel widths and an image size divisible by "
                             f"2^{levels}, got {self.channels}, {self.image_size}")
        if min(self.features, self.width, self.depth, self.light_code) < 1 or self.frequencies < 0:
            raise ValueError("features, width, depth and light_code must be positive, frequencies >= 0")
        if self.base not in BASES:
            raise ValueError(f"unknown base {self.base!r}; choose one of {', '.join(BASES)}")

    @classmethod
    def from_dict(cls, data: dict) -> "PhorhumNetConfig":
        return config_from_dict(cls, {"base": "sphere", **data})  # checkpoints before the setting: the sphere


BASES = ("mean_head", "sphere")


class BlurPool(nn.Module):
    """A [1 2 1]^2 / 16 low-pass, then every second pixel (anti-aliased subsampling, Zhang 2019)."""

    def __init__(self, channels: int):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel.to(x.dtype), stride=2,
                        groups=x.shape[1])


def _convs(c_in: int, c_out: int) -> nn.Sequential:
    groups = math.gcd(8, c_out)
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.SiLU())


class UNet(nn.Module):
    """(B, C_in, S, S) -> features (B, F, S/2, S/2) and the bottleneck (B, channels[-1], S/2^L, S/2^L)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], features: int):
        super().__init__()
        self.stem = _convs(in_channels, channels[0])
        self.pools = nn.ModuleList(BlurPool(c) for c in channels[:-1])
        self.downs = nn.ModuleList(_convs(a, b) for a, b in zip(channels[:-1], channels[1:]))
        self.bottom = nn.Sequential(BlurPool(channels[-1]), _convs(channels[-1], channels[-1]))
        ups = []
        for i in range(len(channels) - 1, 0, -1):  # concatenated with the level's skip, then convolved
            ups.append(_convs(channels[i] + channels[i], channels[i - 1]))
        self.ups = nn.ModuleList(ups)
        self.out = nn.Conv2d(channels[0], features, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)  # S
        skips = []
        for pool, down in zip(self.pools, self.downs):
            x = down(pool(x))  # S/2, S/4, ...
            skips.append(x)
        bottleneck = self.bottom(x)
        x = bottleneck
        for up in self.ups:
            skip = skips.pop()
            x = up(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False),
                              skip], dim=1))
        return self.out(x), bottleneck  # x is at S/2: the first pooled level's size


def positional_encoding(q: Tensor, frequencies: int) -> Tensor:
    """(..., 3) -> (..., 3 + 6 * frequencies): q, then sin and cos of 2^k pi q for k < frequencies."""
    if frequencies == 0:
        return q
    scales = (2.0 ** torch.arange(frequencies, dtype=q.dtype, device=q.device)) * math.pi
    angles = (q[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat([q, torch.sin(angles), torch.cos(angles)], dim=-1)


class PhorhumNet(nn.Module):
    """Image + camera + world points -> signed distance and albedo (see the module docstring).

    Settings are `PhorhumNetConfig`'s, as keyword arguments. Attribute: `config`.
    """

    config_class = PhorhumNetConfig
    premultiplied_input = False  # photographs over their background, not RGB x alpha as the ring datasets

    def __init__(self, **settings):
        super().__init__()
        self.config = c = PhorhumNetConfig(**settings)
        self.unet = UNet(c.in_channels, c.channels, c.features)
        self.light = nn.Linear(c.channels[-1], c.light_code)
        n_in = c.features + 3 + 6 * c.frequencies
        self.inp = nn.Linear(n_in, c.width)
        self.hidden = nn.ModuleList(nn.Linear(c.width, c.width) for _ in range(c.depth - 1))
        self.skip = nn.Linear(n_in, c.width)  # the input added back halfway (the thesis's additive skip)
        self.head = nn.Linear(c.width, 4)
        nn.init.zeros_(self.head.weight)  # start at the prior, grey albedo
        nn.init.zeros_(self.head.bias)
        # k of the label loss's sigmoid(-k d), learnt (the thesis's); about 1 / the near samples' spread
        self.log_sharpness = nn.Parameter(torch.tensor(math.log(100.0)))
        self.shading = nn.Sequential(nn.Linear(3 + c.light_code, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(),
                                     nn.Linear(64, 3))
        if c.base == "mean_head":  # not in the state dict: remade (deterministically) wherever the net is built
            lattice = mean_head_sdf()
            self.register_buffer("base_values", torch.from_numpy(lattice.values).clone(), persistent=False)
            self.register_buffer("base_box", torch.from_numpy(np.stack([lattice.lo, lattice.hi])).float(),
                                 persistent=False)

    @classmethod
    def from_config(cls, config: PhorhumNetConfig) -> "PhorhumNet":
        return cls(**asdict(config))

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 4, S, S) RGB + mask in [0, 1] -> pixel-aligned features (B, F, S/2, S/2), light codes (B, Z)."""
        check_images(images, self.config.in_channels, self.config.image_size)
        features, bottleneck = self.unet(images)
        return features, self.light(bottleneck.mean(dim=(2, 3)))

    def query(self, features: Tensor, cameras: Cameras, points: Tensor) -> tuple[Tensor, Tensor]:
        """Signed distance (B, N) and albedo (B, N, 3) at world points (B, N, 3), seen by the B cameras
        whose images gave `features`."""
        uv, _ = cameras.project(points)
        size = torch.tensor([cameras.width, cameras.height], dtype=points.dtype, device=points.device)
        grid = (2 * uv / size - 1)[:, :, None, :]  # pixel corners at -1 and 1 (align_corners=False)
        pixel = F.grid_sample(features, grid.to(features.dtype), mode="bilinear", padding_mode="zeros",
                              align_corners=False)[..., 0].transpose(1, 2)  # (B, N, F)
        q = points @ cameras.R.transpose(1, 2).to(points.dtype)  # the world point in the camera's axes
        x = torch.cat([pixel, positional_encoding(q, self.config.frequencies)], dim=-1)
        h = F.silu(self.inp(x))
        half = len(self.hidden) // 2
        for k, layer in enumerate(self.hidden):
            if k == half:
                h = h + self.skip(x)
            h = F.silu(layer(h))
        out = self.head(h)
        return self.base(points) + out[..., 0], torch.sigmoid(out[..., 1:])

    def base(self, points: Tensor) -> Tensor:
        """The prior's signed distance at points (..., 3) (`PhorhumNetConfig.base`)."""
        if self.config.base == "sphere":
            return points.norm(dim=-1) - self.config.sphere_radius
        return lattice_distance(self.base_values, self.base_box, points)

    def shade(self, normals: Tensor, codes: Tensor) -> Tensor:
        """(B, N, 3) RGB shading of unit normals (B, N, 3) under the images' light codes (B, Z)."""
        z = codes[:, None, :].expand(*normals.shape[:2], codes.shape[-1])
        return F.softplus(self.shading(torch.cat([normals, z], dim=-1)))

    def forward(self, images: Tensor, cameras: Cameras, points: Tensor, shading_normals: Tensor | None = None
                ) -> dict[str, Tensor]:
        """Everything a training step asks of the network, in one call (so DistributedDataParallel
        sees every parameter used): at world points (B, N, 3) of the photographs' heads the distance
        "d" (B, N), "albedo" (B, N, 3) and the distance's "gradient" (B, N, 3, differentiable), the
        "shading" (B, M, 3) of the unit `shading_normals` (B, M, 3) under each photograph's light, and
        the label loss's "sharpness" k, and the photographs' "features" and light "codes" (for
        rendering, `query` and `shade`)."""
        features, codes = self.encode(images)
        d, albedo, gradient = self.sdf_with_normals(features, cameras, points)
        out = {"d": d, "albedo": albedo, "gradient": gradient, "sharpness": self.log_sharpness.exp(),
               "features": features, "codes": codes}
        if shading_normals is not None:
            out["shading"] = self.shade(shading_normals, codes)
        return out

    def field(self, features: Tensor, camera: Cameras):
        """The head of one photograph as a field for the sphere tracer: points (..., 3) -> d (...);
        `features` (1, F, h, w) and `camera` (1 camera) of that photograph."""
        def distance(points: Tensor) -> Tensor:
            d, _ = self.query(features, camera, points.reshape(1, -1, 3))
            return d.reshape(points.shape[:-1])

        # what the tracer asks a field to decide whether its outputs need gradients (and their dtype)
        distance.parameters = lambda: iter([features, *self.parameters()])  # type: ignore[attr-defined]
        return distance

    def sdf_with_normals(self, features: Tensor, cameras: Cameras, points: Tensor,
                         create_graph: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """d (B, N), albedo (B, N, 3) and the gradient of d (B, N, 3) at world points (autograd)."""
        with torch.enable_grad():
            points = points if points.requires_grad else points.detach().requires_grad_(True)
            d, albedo = self.query(features, cameras, points)
            gradient, = torch.autograd.grad(d.sum(), points, create_graph=create_graph)
        return d, albedo, gradient
