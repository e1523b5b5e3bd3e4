"""Image encoders of the single-view network: an RGBA image to a 512-dimensional code.

One job: the three encoders the seed compares, and one the project pretrains, all (B, 4, S, S) in
[0, 1] -> (B, 512), chosen by `make_encoder(name)`:
  - "baseline": Soft Rasterizer's encoder (examples/recon/models.py `Encoder`): three 5x5
    stride-2 convolutions with 64, 128, 256 channels, each with BatchNorm and ReLU, then fully
    connected 256 * ceil(S / 8)^2 -> 1024 -> 1024 -> 512, each followed by ReLU (the code's last ReLU
    included: the code is non-negative, as in SoftRas).
  - "resnet": the seed's ResNet-like variant: a 5x5 stride-2 stem (64 channels), then residual
    blocks (two 3x3 convolutions with BatchNorm, identity or 1x1 projection shortcut) 64 -> 128
    (stride 2), 128 -> 256 (stride 2), 256 -> 256, and the same fully connected head.
  - "attention": the seed's attention variant: the baseline's three convolution stages, each
    followed by squeeze-and-excitation channel attention, then one self-attention block over the
    ceil(S / 8)^2 positions of the last feature map (its residual gate starts at 0, so the block
    starts as the identity), and the same head.
  - "pix2pix": the first four levels of the pix2pix normals generator's encoder (`pix2pix.NormalsNet`:
    4x4 stride-2 convolutions with 16, 32, 64, 128 channels, LeakyReLU(0.2) before each but the first,
    InstanceNorm after each but the first), then LeakyReLU and the same head. Its trunk has exactly
    the generator's module layout, so a trained normals run can initialise it (`load_pix2pix_trunk`):
    the normals network, trained anyway for Wu et al.'s pipeline, has learnt from the same images
    which pixels face where. S must be a multiple of 16; the head reads (S / 16)^2 positions.

BatchNorm. Every encoder normalises with `GlobalBatchNorm2d`, a `torch.nn.BatchNorm2d` (same
parameters, buffers and state_dict) whose training-mode statistics are taken over the GLOBAL batch
when `torch.distributed` is initialised with more than one process: the per-channel sum and the
sum of squared deviations go through a differentiable all-reduce, so a data-parallel run normalises
(and back-propagates) exactly as one process holding the whole batch. PyTorch's own
`torch.nn.SyncBatchNorm` does the same but, in torch 2.13, only for CUDA / XPU / HPU tensors (on CPU
it raises "SyncBatchNorm expected input tensor to be on GPU"), so it cannot serve gloo on CPU; this
one works with any backend and device. Outside a process group it is plain BatchNorm2d.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

CONV_CHANNELS = (64, 128, 256)  # SoftRas Encoder dim_hidden[:3] = [dim1, dim1 * 2, dim1 * 4], dim1 = 64
FC_HIDDEN = (1024, 1024)        # SoftRas Encoder dim_hidden[3:] = [dim2, dim2], dim2 = 1024
LATENT = 512                    # SoftRas Encoder dim_out = Decoder dim_in = 512
PIX2PIX_CHANNELS = (16, 32, 64, 128)  # NormalsNetConfig.channels[:4] (pix2pix unet_256 / 4)


# ---------------------------------------------------------------------------------------- BatchNorm
def _distributed_world() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient is summed too (each process's loss depends on all
    processes' inputs through the sum)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # noqa: D102
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with global-batch statistics under torch.distributed (see the module docstring).

    Input and output (B, C, H, W). Running statistics are updated from the global mean and the
    global unbiased variance, as one process with the whole batch would.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or _distributed_world() == 1:
            return super().forward(x)
        return self._global_forward(x)

    def _global_forward(self, x: Tensor) -> Tensor:
        C = x.shape[1]
        local = torch.cat([x.sum((0, 2, 3)), x.new_tensor([x.numel() / C])])
        total = _AllReduceSum.apply(local)
        count = total[C].detach()
        mean = total[:C] / count
        centred = x - mean[None, :, None, None]
        var = _AllReduceSum.apply(centred.pow(2).sum((0, 2, 3))) / count
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach() * (count / (count - 1).clamp_min(1)))
        return y

    @torch.no_grad()
    def _update_running(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


# ---------------------------------------------------------------------------------------- blocks
def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 5, stride: int = 2) -> nn.Sequential:
    """Convolution ('same' padding, ceil(S / stride) output), GlobalBatchNorm2d, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2),
                         GlobalBatchNorm2d(c_out), nn.ReLU(inplace=True))


def _head(in_features: int, hidden: tuple[int, ...] = FC_HIDDEN, latent: int = LATENT) -> nn.Sequential:
    """Flatten, then Linear + ReLU layers in_features -> hidden... -> latent (SoftRas fc1-fc3)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip((in_features, *hidden), (*hidden, latent)):
        layers += [nn.Linear(n_in, n_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def _feature_size(image_size: int) -> int:
    """Side of the feature map after three stride-2 stages: ceil(S / 8) as in SoftRas."""
    return math.ceil(image_size / 8)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a ReLU between, plus a shortcut (a 1x1 projection with
    BatchNorm when the shape changes), then ReLU: (B, c_in, S, S) -> (B, c_out, ceil(S / stride), ...)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), GlobalBatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), GlobalBatchNorm2d(c_out))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), GlobalBatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al. 2018): x * sigmoid(MLP(global average of x)), (B, C, H, W)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)[:, :, None, None]


class SelfAttention2d(nn.Module):
    """Self-attention over the positions of a feature map (SAGAN-style), (B, C, H, W) -> same.

    Queries and keys are 1x1 projections to C / 8 channels, values to C; out = x + gamma * attention,
    with the learnable gate gamma starting at 0.
    """

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, d)
        k = self.key(x).flatten(2)                    # (B, d, N)
        v = self.value(x).flatten(2)                  # (B, C, N)
        weights = torch.softmax(q @ k / math.sqrt(q.shape[-1]), dim=-1)  # (B, N, N)
        attended = (v @ weights.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.gamma * attended


# ---------------------------------------------------------------------------------------- encoders
class BaselineEncoder(nn.Module):
    """SoftRas's encoder: (B, in_channels, S, S) -> (B, latent), see the module docstring."""

    def __init__(self, image_size: int = 64, in_channels: int = 4, latent: int = LATENT):
        super().__init__()
        c1, c2, c3 = CONV_CHANNELS
        self.features = nn.Sequential(_conv_bn_relu(in_channels, c1), _conv_bn_relu(c1, c2),
                                      _conv_bn_relu(c2, c3))
        self.head = _head(c3 * _feature_size(image_size) ** 2, latent=latent)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class ResNetEncoder(nn.Module):
    """The ResNet-like variant: (B, in_channels, S, S) -> (B, latent), see the module docstring."""

    def __init__(self, image_size: int = 64, in_channels: int = 4, latent: int = LATENT):
        super().__init__()
        c1, c2, c3 = CONV_CHANNELS
        self.features = nn.Sequential(_conv_bn_relu(in_channels, c1), ResidualBlock(c1, c2, stride=2),
                                      ResidualBlock(c2, c3, stride=2), ResidualBlock(c3, c3))
        self.head = _head(c3 * _feature_size(image_size) ** 2, latent=latent)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class AttentionEncoder(nn.Module):
    """The attention variant: (B, in_channels, S, S) -> (B, latent), see the module docstring."""

    def __init__(self, image_size: int = 64, in_channels: int = 4, latent: int = LATENT):
        super().__init__()
        c1, c2, c3 = CONV_CHANNELS
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, c1), SqueezeExcitation(c1),
            _conv_bn_relu(c1, c2), SqueezeExcitation(c2),
            _conv_bn_relu(c2, c3), SqueezeExcitation(c3),
            SelfAttention2d(c3))
        self.head = _head(c3 * _feature_size(image_size) ** 2, latent=latent)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class Pix2PixEncoder(nn.Module):
    """pix2pix's encoder levels, then the baseline's head: (B, in_channels, S, S) -> (B, latent), see the
    module docstring. `features[i]` has the layout of `NormalsNet.downs[i]`."""

    takes_full_image = True  # its first level halves the image: a network puts no stem before it

    def __init__(self, image_size: int = 64, in_channels: int = 4, latent: int = LATENT,
                 channels: tuple[int, ...] = PIX2PIX_CHANNELS):
        super().__init__()
        levels = len(channels)
        if image_size % (1 << levels):
            raise ValueError(f"the pix2pix encoder halves the image {levels} times: S must be a multiple of "
                             f"{1 << levels}, got {image_size}")
        downs: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 4, 2, 1)]
        for a, b in zip(channels, channels[1:]):
            downs.append(nn.Sequential(nn.LeakyReLU(0.2), nn.Conv2d(a, b, 4, 2, 1), nn.InstanceNorm2d(b, affine=True)))
        self.features = nn.Sequential(*downs)
        side = image_size >> levels
        self.head = nn.Sequential(nn.LeakyReLU(0.2), _head(channels[-1] * side * side, latent=latent))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


def load_pix2pix_trunk(encoder: Pix2PixEncoder, downs: nn.ModuleList) -> None:
    """Copy the first levels of a pix2pix generator's encoder (`NormalsNet.downs`) into `encoder`'s
    trunk; ValueError when their shapes differ (another width, input channels or depth)."""
    if not isinstance(encoder, Pix2PixEncoder) or len(downs) < len(encoder.features):
        raise ValueError("only the pix2pix encoder takes a normals network's levels, and it needs at least "
                         f"{len(encoder.features)} of them")
    for level, (mine, theirs) in enumerate(zip(encoder.features, downs)):
        state, source = mine.state_dict(), theirs.state_dict()
        if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in source.items()}:
            raise ValueError(f"the normals network's encoder level {level} has another shape than this encoder's")
        mine.load_state_dict(source)


ENCODER_CLASSES: dict[str, type[nn.Module]] = {"baseline": BaselineEncoder, "resnet": ResNetEncoder,
                                               "attention": AttentionEncoder, "pix2pix": Pix2PixEncoder}
ENCODERS = tuple(ENCODER_CLASSES)  # the names a config accepts


def takes_full_image(name: str) -> bool:
    """Whether the encoder called `name` reads the image itself (its first level halves it), where the
    others follow a network's own stride-2 stem."""
    return getattr(ENCODER_CLASSES[name], "takes_full_image", False)


def make_encoder(name: str, image_size: int = 64, in_channels: int = 4, latent: int = LATENT) -> nn.Module:
    """The encoder called `name` (one of `ENCODERS`) for S = `image_size` inputs."""
    if name not in ENCODER_CLASSES:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODER_CLASSES[name](image_size=image_size, in_channels=in_channels, latent=latent)


def image_trunk(name: str, image_size: int, in_channels: int, latent: int = LATENT) -> tuple[nn.Module, nn.Module]:
    """(stem, encoder) of a network that reads (B, in_channels, S, S) images: a stride-2 stem (5x5
    convolution to 32 channels, BatchNorm, ReLU) to the encoders' S / 2, or none (identity) for an
    encoder that halves the image itself ("pix2pix")."""
    if takes_full_image(name):
        return nn.Identity(), make_encoder(name, image_size, in_channels, latent)
    stem = nn.Sequential(nn.Conv2d(in_channels, 32, 5, 2, 2), GlobalBatchNorm2d(32), nn.ReLU(inplace=True))
    return stem, make_encoder(name, (image_size + 1) // 2, 32, latent)


def config_from_dict(cls: type, data: dict) -> Any:
    """A network's settings dataclass rebuilt from `asdict` output (e.g. read back from a checkpoint);
    ValueError for unknown keys."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown network settings {unknown}")
    return cls(**data)


def check_images(images: Tensor, channels: int, size: int) -> None:
    """ValueError unless images is a (B, channels, size, size) batch."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (channels, size, size):
        raise ValueError(f"expected images of shape (B, {channels}, {size}, {size}), got {tuple(images.shape)}")
