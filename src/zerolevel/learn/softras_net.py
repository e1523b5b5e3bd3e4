"""Soft Rasterizer's single-view mesh network: an RGBA image to the vertices of a deformed sphere.

One job: `SoftRasNet`, encoder (`encoders.py`) + SoftRas's decoder. The decoder (SoftRas
examples/recon/models.py `Decoder`, after Kato et al.'s Neural 3D Mesh Renderer) maps the 512-d
code through fully connected layers 512 -> 1024 -> 2048 (ReLU) to a centroid c (3) and per-vertex
offsets b (642 x 3) and deforms the template so that every vertex stays in a bounded box:

    base    = obj_scale * template            (template in (-1, 1): base in (-0.5, 0.5))
    u       = sign(base) * sigmoid(logit(|base|) + bias_scale * b)   in (-1, 1), same octant
    c       = tanh(centroid_scale * fc_centroid(h))                  in (-1, 1)^3
    v       = 0.5 * (c + (1 - c) * relu(u) - (1 + c) * relu(-u))    in (-0.5, 0.5)^3

With zero offsets and centroid u = base, so the output is 0.25 * template: a sphere of radius 0.25
(see `template.py`). The centroid splits the box unevenly: positive coordinates are squeezed into
(c, 1), negative ones into (-1, c). A template coordinate that is exactly 0 (96 of the icosphere's
1926) has sign 0 and stays on the centroid's plane, and a vertex never leaves its octant around the
centroid: both as in SoftRas. Vertices are in the world frame of the ring cameras; the faces are the
template's, shared by the whole batch, so every predicted mesh is closed (the template is watertight).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoders import ENCODERS, LATENT, check_images, config_from_dict, make_encoder
from .template import SUBDIVISIONS, Template, sphere_template


@dataclass
class NetConfig:
    """The network's shape; defaults are SoftRas's (examples/recon/models.py, train.py)."""

    encoder: str = "baseline"       # the seed's variants: "resnet", "attention" (encoders.py)
    image_size: int = 64            # train.py IMAGE_SIZE = 64 (the rendered ShapeNet set)
    in_channels: int = 4            # Encoder(dim_in=4): RGBA
    latent: int = LATENT            # Encoder(dim_out=512), Decoder(dim_in=512)
    decoder_hidden: tuple[int, int] = (1024, 2048)  # Decoder: dim = 1024, dim_hidden = [dim, dim * 2]
    centroid_scale: float = 0.1     # Decoder(centroid_scale=0.1)
    bias_scale: float = 1.0         # Decoder(bias_scale=1.0)
    obj_scale: float = 0.5          # Decoder.obj_scale = 0.5: template units -> logit box
    subdivisions: int = SUBDIVISIONS  # data/obj/sphere/sphere_642.obj: 642 vertices, 1280 faces

    def __post_init__(self) -> None:
        self.decoder_hidden = tuple(int(n) for n in self.decoder_hidden)  # a JSON round trip gives a list
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if self.image_size < 8 or self.in_channels < 1:
            raise ValueError(f"need image_size >= 8 and in_channels >= 1, got {self.image_size}, "
                             f"{self.in_channels}")
        if not 0 < self.obj_scale < 1:
            raise ValueError(f"obj_scale must be in (0, 1) (template vertices lie in [-1, 1]), "
                             f"got {self.obj_scale}")

    @classmethod
    def from_dict(cls, data: dict) -> "NetConfig":
        """Rebuild from `asdict` output (e.g. read back from a checkpoint); unknown keys are an error."""
        return config_from_dict(cls, data)


class MeshDecoder(nn.Module):
    """SoftRas's decoder: (B, latent) code -> (B, V, 3) world vertices of the deformed template."""

    def __init__(self, config: NetConfig, template: Template):
        super().__init__()
        h1, h2 = config.decoder_hidden
        V = template.num_vertices
        self.fc1 = nn.Linear(config.latent, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc_centroid = nn.Linear(h2, 3)
        self.fc_bias = nn.Linear(h2, V * 3)
        self.centroid_scale, self.bias_scale = config.centroid_scale, config.bias_scale
        base = template.vertices * config.obj_scale
        # logit(|base|); a zero coordinate is clamped to a finite logit, its sign 0 pins it anyway
        magnitude = base.abs().clamp(1e-6, 1 - 1e-6)
        self.register_buffer("base_logit", torch.log(magnitude / (1 - magnitude)), persistent=False)
        self.register_buffer("base_sign", torch.sign(base), persistent=False)

    def forward(self, code: Tensor) -> Tensor:
        h = F.relu(self.fc2(F.relu(self.fc1(code))))
        centroid = torch.tanh(self.fc_centroid(h) * self.centroid_scale)[:, None, :]  # (B, 1, 3)
        bias = (self.fc_bias(h) * self.bias_scale).reshape(code.shape[0], -1, 3)
        u = torch.sigmoid(self.base_logit + bias) * self.base_sign
        return 0.5 * (centroid + (1 - centroid) * F.relu(u) - (1 + centroid) * F.relu(-u))


class SoftRasNet(nn.Module):
    """Single-view mesh reconstruction: (B, 4, S, S) RGBA in [0, 1] -> (B, V, 3) world vertices.

    `SoftRasNet("resnet")` picks the encoder; other `NetConfig` settings are keyword arguments.
    Attributes: `config` (NetConfig), `faces` (F, 3) int64 buffer shared by every output mesh,
    `template` (Template, topology for the regularisers).
    """

    config_class = NetConfig

    def __init__(self, encoder: str = "baseline", **settings):
        super().__init__()
        self.config = NetConfig(encoder=encoder, **settings)
        self.template = sphere_template(self.config.subdivisions)
        self.encoder = make_encoder(self.config.encoder, self.config.image_size, self.config.in_channels,
                                    self.config.latent)
        self.decoder = MeshDecoder(self.config, self.template)
        self.register_buffer("faces", self.template.faces.clone(), persistent=False)

    @classmethod
    def from_config(cls, config: NetConfig) -> "SoftRasNet":
        settings = asdict(config)
        return cls(settings.pop("encoder"), **settings)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, S, S) images with the configured C and S -> (B, V, 3) vertices in (-0.5, 0.5)^3."""
        c, s = self.config.in_channels, self.config.image_size
        check_images(images, c, s)
        return self.decoder(self.encoder(images))

    @torch.no_grad()
    def predict_meshes(self, images: Tensor, cameras: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(vertices float64 (V, 3), faces int64 (F, 3)) of each image's predicted mesh (in the world
        frame whatever the view: the images' cameras, which other networks read, are not needed)."""
        faces = self.faces.cpu().numpy()
        return [(vertices, faces) for vertices in self(images).double().cpu().numpy()]
