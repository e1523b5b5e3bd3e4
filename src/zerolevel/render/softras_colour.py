"""Soft Rasterizer colour aggregation: per-corner attributes of each face and, chunk by chunk,
the per-pixel softmax over depth (its shift, denominator and weighted colour sum) with the alpha,
and the fold of two chunks. Private to `softras.py` (`soft_render`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .softras_scene import INV_AREA, INV_Z, Scene, pair_geometry, pairs, signed_logits, sum_log_free


@dataclass(frozen=True)
class ColourOptions:
    """`soft_render`'s colour-aggregation arguments (see there)."""

    gamma: float
    eps: float
    near: float
    far: float
    double_sided: bool
    perspective_correct: bool

    def __post_init__(self) -> None:
        if self.gamma <= 0 or not self.far > self.near:
            raise ValueError(f"need gamma > 0 and far > near, got {self.gamma}, {self.near}, {self.far}")


def face_colour_table(scene: Scene, faces: Tensor, attributes: Tensor | None,
                       face_attributes: Tensor | None) -> Tensor:
    """(B * F, 3, C) attribute of each face corner (per-face attributes repeated on the corners)."""
    if attributes is not None and face_attributes is not None:
        raise ValueError("give either per-vertex attributes or face_attributes, not both")
    dtype, device = scene.table.dtype, scene.table.device
    faces = faces.to(device=device, dtype=torch.long)
    if attributes is None and face_attributes is None:
        return torch.ones(1, 1, 1, dtype=dtype, device=device).expand(scene.B * scene.F, 3, 3)
    per_face = attributes is None
    values = (face_attributes if per_face else attributes).to(device=device, dtype=dtype)
    if values.dim() == 2:
        values = values[None]
    expected = scene.F if per_face else None
    if values.dim() != 3 or values.shape[0] not in (1, scene.B) or (
            expected is not None and values.shape[1] != expected):
        raise ValueError(f"{'face_attributes' if per_face else 'attributes'} must be "
                         f"({scene.B} or 1, {'F' if per_face else 'V'}, C), got {tuple(values.shape)}")
    values = values.expand(scene.B, -1, -1)
    corners = values[:, :, None, :].expand(-1, -1, 3, -1) if per_face else values[:, faces]
    return corners.reshape(scene.B * scene.F, 3, values.shape[-1])


def colour_chunk(scene: Scene, f0: int, f1: int, colours: Tensor,
                  opt: ColourOptions) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-pixel pieces of the chunk: log_free (P,) as in `sum_log_free`, and the softmax's shift m
    (P,), sum_j e_j (P,) and sum_j e_j C_j (P, C), with e_j = D_j exp(z_j / gamma - m);
    m >= eps / gamma is detached (it cancels in the ratio)."""
    face, pixel, centres = pairs(scene, torch.arange(f0, f1, device=scene.table.device))
    rows = scene.table.index_select(0, face)
    d2, inside, bary = pair_geometry(rows, centres)
    x, keep = signed_logits(scene, d2, inside)
    log_free = sum_log_free(scene, pixel, x, keep)
    keep = keep & (rows[:, INV_AREA] != 0)  # a degenerate triangle has no surface to colour
    if not opt.double_sided:
        keep = keep & scene.front[face]
    idx = keep.nonzero().squeeze(1)
    face, pixel, rows, bary, x = face[idx], pixel[idx], rows[idx], bary[idx], x[idx]

    w = bary.clamp(0.0, 1.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-5)  # SoftRas's barycentric_clip
    w_over_z = w * rows[:, INV_Z]
    inv_depth = w_over_z.sum(-1)
    depth = 1.0 / inv_depth
    in_range = (depth >= opt.near) & (depth <= opt.far)
    z_norm = (opt.far - depth) / (opt.far - opt.near)
    logit = F.logsigmoid(x) + z_norm / opt.gamma
    logit = torch.where(in_range, logit, torch.full_like(logit, -math.inf))
    weights = w_over_z / inv_depth[:, None] if opt.perspective_correct else w
    colour = (weights[..., None] * colours.index_select(0, face)).sum(1)  # (N, C)

    P = scene.B * scene.H * scene.W
    shift = torch.full((P,), opt.eps / opt.gamma, dtype=x.dtype, device=x.device)
    shift = shift.scatter_reduce(0, pixel, logit.detach(), "amax", include_self=True)
    e = torch.exp(logit - shift[pixel])
    den = torch.zeros(P, dtype=x.dtype, device=x.device).index_add(0, pixel, e)
    num = torch.zeros(P, colour.shape[-1], dtype=x.dtype, device=x.device)
    return log_free, shift, den, num.index_add(0, pixel, e[:, None] * colour)


def colour_combine(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Fold two chunks' (log_free, shift, den, num) into one, rescaling to the larger shift."""
    shift = torch.maximum(a[1], b[1])
    sa, sb = torch.exp(a[1] - shift), torch.exp(b[1] - shift)
    return (a[0] + b[0], shift, a[2] * sa + b[2] * sb, a[3] * sa[:, None] + b[3] * sb[:, None])

