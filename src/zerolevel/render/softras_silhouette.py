"""Soft silhouettes with an analytic backward: the sum of log(1 - D_j) per pixel over the
pixel-triangle pairs, evaluated in batches grouped by candidate-box shape, and the two scatter-adds
of its gradient. Private to `softras.py` (`soft_silhouette`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .softras_scene import (EX, EY, INV_AREA, INV_LEN2, VX, VY, Scene, chunk_bounds, exclusive_cumsum,
                            pairs, signed_logits)


def silhouette_log_free(scene: Scene, max_pairs: int) -> Tensor:
    """(B * H * W,) sum over the pixel's kept pairs of log(1 - D_j); differentiable once w.r.t.
    `scene.corners` (analytic backward)."""
    return _SilhouetteLogFree.apply(scene.corners, scene, max(1, int(max_pairs)))


class _SilhouetteLogFree(torch.autograd.Function):
    """(B * F, 3, 2) projected corners -> (B * H * W,) sum_j log(1 - D_j) per pixel, with an
    analytic backward.

    Forward: the pairs are evaluated in batches of at most `max_pairs` (`_silhouette_batches`)
    without an autograd graph. For each kept pair it saves the pixel, the two corners of the edge
    nearest to the pixel and two 2-vectors (40 bytes a pair, against ~0.5 kB of autograd state),
    so the backward pass is a few gathers and scatter-adds: nothing is recomputed. The gradient
    (envelope theorem: the closest point's parameter t is optimal, or clamped at an end) of one
    pair's log(1 - D) = logsigmoid(-x), x = delta d^2 / sigma, d^2 = |r|^2,
    r = p - ((1 - t) v_a + t v_b):
        d/dv_a = 2 sigmoid(x) delta (ndc_scale / sigma) (1 - t) r,   d/dv_b = same with t.
    This is the gradient autograd takes through `pair_geometry` up to float rounding (autograd
    also differentiates t, whose terms carry the factor r . e, zero at the optimum but for rounding).
    The inside flag, the cut-off and the nearest edge are piecewise constant, as in autograd.
    """

    @staticmethod
    def forward(ctx, corners: Tensor, scene: Scene, max_pairs: int) -> Tensor:  # noqa: D102
        grads = ctx.needs_input_grad[0]
        columns = scene.table.detach().T.contiguous()  # (19, B * F)
        log_free = torch.zeros(scene.B * scene.H * scene.W, dtype=columns.dtype, device=columns.device)
        saved = [_silhouette_pairs(scene, *batch, log_free, grads)
                 for batch in _silhouette_batches(scene, columns, max_pairs)]
        ctx.saved = [pieces for pieces in saved if pieces is not None]
        ctx.corner_shape = corners.shape
        return log_free

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_free: Tensor) -> tuple[Tensor | None, None, None]:  # noqa: D102
        grad = grad_log_free.new_zeros(ctx.corner_shape).view(-1, 2)
        for pixel, corner_a, corner_b, grad_a, grad_b in ctx.saved:
            g = grad_log_free.index_select(0, pixel)[:, None]
            grad.index_add_(0, corner_a, grad_a * g)
            grad.index_add_(0, corner_b, grad_b * g)
        ctx.saved = None
        return grad.view(ctx.corner_shape), None, None


_SMALL_BOX = 16     # candidate boxes up to this many pixels a side are enumerated shape by shape,
_MIN_GROUP = 4096   # when their shape has at least this many pairs; other faces pair by pair
_NEXT_CORNER = (1, 2, 0)


def _silhouette_batches(scene: Scene, columns: Tensor, max_pairs: int) -> Iterator[tuple[Tensor, ...]]:
    """Yield the candidate pairs in batches of at most `max_pairs` (or one face's) as broadcastable
    (columns (19, ...), px (...), py (...), face (...), pixel (...)): the faces' table columns
    (`columns` is the (19, B * F) transposed table), pixel centres, flat face and pixel indices.

    Faces whose candidate boxes share a small shape (a x b pixels) form (n, a * b) batches by
    broadcasting a box of offsets against the faces' rows, with no per-pair index arithmetic or
    gathers (most faces of a 1280-face template at 64^2: boxes of 3-7 pixels a side); the others go
    through `pairs`. Both evaluate each pair with the same arithmetic; only the order in which
    the pairs are summed into the pixels differs from one face range at a time.
    """
    device, counts, wx = columns.device, scene.counts, scene.wx
    wy = torch.where(counts > 0, torch.div(counts, wx.clamp_min(1), rounding_mode="floor"), 0)
    small = (counts > 0) & (wx <= _SMALL_BOX) & (wy <= _SMALL_BOX)
    faces = small.nonzero().squeeze(1)
    key = (wy * (_SMALL_BOX + 1) + wx)[faces]
    order = torch.argsort(key, stable=True)
    faces, key = faces[order], key[order]
    shapes, sizes = torch.unique_consecutive(key, return_counts=True)
    rest = [((counts > 0) & ~small).nonzero().squeeze(1)]
    start = 0
    for shape, size in zip(shapes.tolist(), sizes.tolist()):
        group, start = faces[start:start + size], start + size
        b, a = divmod(shape, _SMALL_BOX + 1)
        if size * a * b < _MIN_GROUP:
            rest.append(group)
            continue
        col = torch.arange(a, device=device).repeat(b)
        row = torch.arange(b, device=device).repeat_interleave(a)
        per = max(1, max_pairs // (a * b))
        for g0 in range(0, size, per):
            face = group[g0:g0 + per, None]  # (n, 1)
            x0, y0 = scene.x0[face], scene.y0[face]
            batch = torch.div(face, scene.F, rounding_mode="floor")
            pixel = (batch * scene.H + y0 + row) * scene.W + x0 + col  # (n, a * b)
            px = (x0 + col).to(columns.dtype) + 0.5
            py = (y0 + row).to(columns.dtype) + 0.5
            yield columns.index_select(1, face[:, 0])[:, :, None], px, py, face, pixel
    rest = torch.sort(torch.cat(rest)).values
    for i0, i1 in chunk_bounds(exclusive_cumsum(counts[rest]), max_pairs):
        face, pixel, centres = pairs(scene, rest[i0:i1])
        yield columns.index_select(1, face), centres[:, 0], centres[:, 1], face, pixel


def _silhouette_pairs(scene: Scene, columns: Tensor, px: Tensor, py: Tensor, face: Tensor, pixel: Tensor,
                      log_free: Tensor, grads: bool) -> tuple[Tensor, ...] | None:
    """Add a batch of pairs' log(1 - D) (see `sum_log_free`) to `log_free` (P,) in place; with `grads`,
    return what `_SilhouetteLogFree.backward` needs of the kept pairs: pixel (K,), flat corner
    indices a and b (K,) into (B * F * 3) of the nearest edge v_a v_b, and (K, 2)
    d log(1 - D) / d v_a and d v_b. Arguments as `_silhouette_batches` yields them.

    The same arithmetic as `pair_geometry`, with the edge axis first: (3, ...) arrays keep the
    pairs on the contiguous inner axis, where broadcasting a face's value over its pixels is a
    vectorised loop (a trailing axis of 3 made every elementwise op a loop of 3).
    """
    ex, ey = columns[EX], columns[EY]  # (3, ...) edges e_k
    pvx, pvy = px - columns[VX], py - columns[VY]  # p - v_k
    t = ((pvx * ex + pvy * ey) * columns[INV_LEN2]).clamp(0.0, 1.0)
    rx, ry = pvx - t * ex, pvy - t * ey  # p minus its closest point on edge k
    d2, edge = (rx * rx + ry * ry).min(0)
    inside = ((ex * pvy - ey * pvx) * columns[INV_AREA] > 0).all(0)  # edge functions x inv_area
    x, keep = signed_logits(scene, d2, inside)
    terms = torch.where(keep, F.logsigmoid(-x), torch.zeros_like(x))
    log_free.index_add_(0, pixel.reshape(-1), terms.reshape(-1))
    if not grads:
        return None
    idx = keep.reshape(-1).nonzero().squeeze(1)
    edge = edge.reshape(-1).index_select(0, idx)
    at = edge * keep.numel() + idx  # the nearest edge's entry of the (3, ...) arrays
    t = t.reshape(-1).index_select(0, at)[:, None]
    r = torch.stack([rx.reshape(-1).index_select(0, at), ry.reshape(-1).index_select(0, at)], 1)
    coef = (2.0 * scene.ndc_scale / scene.sigma) * torch.sigmoid(x.reshape(-1).index_select(0, idx))
    coef = torch.where(inside.reshape(-1).index_select(0, idx), coef, -coef)[:, None]  # delta
    corner = face.expand_as(pixel).reshape(-1).index_select(0, idx) * 3
    following = torch.tensor(_NEXT_CORNER, device=edge.device)[edge]
    return (pixel.reshape(-1).index_select(0, idx), corner + edge, corner + following,
            (coef * (1.0 - t)) * r, (coef * t) * r)

