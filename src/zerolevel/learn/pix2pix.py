"""pix2pix's two networks for normal maps (Isola et al. 2017), the source of Wu et al.'s training normals.

One job: `NormalsNet`, the U-Net generator (B, 4, S, S) RGBA in [0, 1] -> (B, 3, S, S) unit normals
in the image's camera frame or in world space (`space`; 0 where the alpha is 0), and `PatchDiscriminator`, the conditional PatchGAN that scores
overlapping patches of (RGBA, normals) as real or predicted. Their losses and training are
`pix2pix_train.py`'s.

The generator (pix2pix's `unet_256`, `UnetSkipConnectionBlock`), L = len(channels) levels:

    encoder: Conv 4x4 stride 2 (no norm at the outermost level), then L - 1 times
             LeakyReLU(0.2), Conv 4x4 stride 2, InstanceNorm (none at the innermost level)
    decoder: innermost to outermost: ReLU, ConvTranspose 4x4 stride 2, InstanceNorm, Dropout(0.5)
             on the `dropout_blocks` innermost blocks, concatenated with the encoder's features of
             the same size (the skip connections); the outermost: ReLU, ConvTranspose to 3 channels
    output:  the 3 channels normalised to unit length (pix2pix's Tanh would bound them; here their
             direction is all that counts), multiplied by the input's foreground (alpha > 0)

Widths are pix2pix's (64, 128, 256, 512, 512, ...) / 4 and 7 levels for 128^2 (1x1 at the bottom),
sized for a CPU. InstanceNorm rather than pix2pix's BatchNorm: pix2pix trains with batch 1, where
its BatchNorm is instance normalisation; here a prediction then does not depend on the batch or on
train / eval mode, and data-parallel runs need no shared statistics. Dropout is active in training
only.

The discriminator (pix2pix's `NLayerDiscriminator`, n_layers = len(channels) - 1): Conv 4x4 stride 2,
LeakyReLU(0.2); n - 1 times Conv 4x4 stride 2, InstanceNorm, LeakyReLU; Conv 4x4 stride 1,
InstanceNorm, LeakyReLU; Conv 4x4 stride 1 to one logit per patch. Four widths give pix2pix's
70x70 receptive field; three give 34x34.

`space`: "camera" (default) predicts the normals in the input view's camera frame (OpenCV: x right,
y down, z forward), and `world_normals` turns them to the dataset's world space with the view's ring
rotation, known for every dataset image: what the image shows fixes them. "world" predicts the
world-space normals directly, so the network must also tell from the image which ring view it shows,
which a symmetric object (a vase, a table) does not; in a short CPU trial on generated shapes it
stayed behind the per-view mean normal map (`normals_eval`) while "camera" beat it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoders import check_images, config_from_dict

SPACES = ("world", "camera")


def to_world(normals: Tensor, rotations: Tensor) -> Tensor:
    """(B, S, S, 3) camera-space normals to world space, n_w = R^T n_c, with (B, 3, 3) world-to-camera R."""
    return torch.einsum("bij,bhwi->bhwj", rotations.to(normals.dtype), normals)


def to_camera(normals: Tensor, rotations: Tensor) -> Tensor:
    """(B, S, S, 3) world-space normals to camera space, n_c = R n_w, with (B, 3, 3) world-to-camera R."""
    return torch.einsum("bij,bhwj->bhwi", rotations.to(normals.dtype), normals)


@dataclass
class NormalsNetConfig:
    """The generator's shape."""

    image_size: int = 128                  # S: a multiple of 2^len(channels)
    in_channels: int = 4                   # RGBA
    channels: tuple[int, ...] = (16, 32, 64, 128, 128, 128, 128)  # pix2pix unet_256 (ngf 64) / 4, per level
    dropout: float = 0.5                   # pix2pix: Dropout(0.5) in the decoder's ...
    dropout_blocks: int = 3                # ... three innermost blocks
    space: str = "camera"                  # the frame of the output normals: "camera" or "world"

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)  # a JSON round trip gives a list
        levels = len(self.channels)
        if levels < 2 or self.image_size % (1 << levels) or min(self.channels) < 1:
            raise ValueError(f"need at least 2 positive channel widths and an image size divisible by "
                             f"2^{levels} (one halving per level), got {self.channels}, {self.image_size}")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, not {self.space!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "NormalsNetConfig":
        """Rebuild from `asdict` output (e.g. read back from a checkpoint); unknown keys are an error."""
        return config_from_dict(cls, data)


class NormalsNet(nn.Module):
    """The U-Net generator: (B, 4, S, S) RGBA in [0, 1] -> (B, 3, S, S) unit normals, 0 where alpha = 0.

    Settings are `NormalsNetConfig`'s, as keyword arguments. Attribute: `config`.
    """

    config_class = NormalsNetConfig

    def __init__(self, **settings):
        super().__init__()
        self.config = c = NormalsNetConfig(**settings)
        ch, levels = c.channels, len(c.channels)
        downs = [nn.Conv2d(c.in_channels, ch[0], 4, 2, 1)]
        for i in range(1, levels):
            norm = [nn.InstanceNorm2d(ch[i], affine=True)] if i < levels - 1 else []
            downs.append(nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(ch[i - 1], ch[i], 4, 2, 1), *norm))
        ups = []
        for i in range(levels - 1, 0, -1):  # innermost first; the blocks above it get [up, skip]
            block = [nn.ReLU(), nn.ConvTranspose2d(ch[i] * (1 if i == levels - 1 else 2), ch[i - 1], 4, 2, 1),
                     nn.InstanceNorm2d(ch[i - 1], affine=True)]
            if levels - 1 - i < c.dropout_blocks and c.dropout > 0:
                block.append(nn.Dropout(c.dropout))
            ups.append(nn.Sequential(*block))
        ups.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(ch[0] * 2, 3, 4, 2, 1)))
        self.downs, self.ups = nn.ModuleList(downs), nn.ModuleList(ups)

    @classmethod
    def from_config(cls, config: NormalsNetConfig) -> "NormalsNet":
        return cls(**asdict(config))

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, S, S) images with the configured C and S -> (B, 3, S, S) unit normals (0 where alpha = 0)."""
        c, s = self.config.in_channels, self.config.image_size
        check_images(images, c, s)
        x, skips = images, []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the innermost features are x itself
        for up in self.ups[:-1]:
            x = torch.cat([up(x), skips.pop()], dim=1)
        normals = F.normalize(self.ups[-1](x), dim=1, eps=1e-6)
        return normals * (images[:, 3:4] > 0).to(normals.dtype)

    def world_normals(self, images: Tensor, rotations: Tensor) -> Tensor:
        """(B, S, S, 3) world-space normals of (B, 4, S, S) images taken by cameras of (B, 3, 3)
        world-to-camera rotations (used only when the network predicts in camera space)."""
        normals = self(images).permute(0, 2, 3, 1)
        return to_world(normals, rotations) if self.config.space == "camera" else normals


class PatchDiscriminator(nn.Module):
    """The conditional PatchGAN: (B, 4 + 3, S, S) RGBA and normals -> (B, 1, P, P) logits, one per
    overlapping patch (real: the dataset's normals; fake: the generator's)."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 7):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for a, b in zip(channels[:-2], channels[1:-1]):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.InstanceNorm2d(b, affine=True), nn.LeakyReLU(0.2)]
        a, b = channels[-2:] if len(channels) > 1 else (channels[0], channels[0])
        layers += [nn.Conv2d(a, b, 4, 1, 1), nn.InstanceNorm2d(b, affine=True), nn.LeakyReLU(0.2),
                   nn.Conv2d(b, 1, 4, 1, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, pairs: Tensor) -> Tensor:
        return self.layers(pairs)
