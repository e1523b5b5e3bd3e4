"""Soft Rasterizer (Liu et al. 2019, "Soft Rasterizer: A Differentiable Renderer for Image-based 3D
Reasoning"): differentiable soft silhouettes and colour images of triangle meshes, on any device.

Its one job: turn a batch of meshes of one topology and a batch of `Cameras` into SoftRas's
probabilistic silhouettes and softmax-aggregated colour images, with exact autograd gradients.

The model (SoftRas's paper and CUDA code, `euclidean` distance, `prod` alpha, `softmax` colour):
  - Each projected triangle f_j spreads over pixel p with probability
        D_j(p) = sigmoid(delta_j(p) * d(p, f_j)^2 / sigma),
    d the Euclidean screen-space distance from p to the triangle's boundary, delta = +1 when p is
    inside the triangle and -1 outside.
  - Silhouette (alpha): A(p) = 1 - prod_j (1 - D_j(p)), summed as sum_j log(1 - D_j) = sum_j
    logsigmoid(-delta d^2 / sigma), exact in floating point even where D_j rounds to 1.
  - Colour: I(p) = sum_j w_j C_j + w_b C_b with w_j = D_j exp(z_j / gamma) / (sum_k D_k exp(z_k / gamma)
    + exp(eps / gamma)) and w_b the background's share. z_j = (far - z) / (far - near) is the
    normalised depth at p (closer = larger), z the perspective-correct camera z interpolated with the
    clipped barycentrics of p; SoftRas's paper calls z_j a "normalised inverse depth", its code uses
    this linear normalisation, and so do we (so sigma, gamma, eps, near, far keep SoftRas's meaning).
    A pair whose z lies outside [near, far] adds to the alpha but not to the colour, as in SoftRas.
  - Pairs with D_j below `dist_eps` outside the triangle are dropped (SoftRas's `dist_eps`): a
    triangle only reaches pixels within r = sqrt(sigma * log(1 / dist_eps - 1)) of it.

Units. Distances are measured in SoftRas's normalised device coordinates: the image width spans
[-1, 1], so one NDC unit is W / 2 pixels (on both axes; distances stay isotropic for non-square
images). So `sigma` has SoftRas's meaning and values: 1e-4 NDC^2 for silhouettes at 64^2 is
d = 0.01 NDC = 0.32 pixels for D = sigmoid(1); a fixed sigma blurs the same fraction of the image at
any resolution. Pixel centres are at integer + 0.5 (zerolevel's OpenCV convention).

Speed (CPU first). Instead of every pixel visiting every triangle (B x H x W x F pairs), each
triangle's screen bounding box, grown by the cut-off radius r, lists the pixels it can reach; these
pixel-triangle pairs are enumerated in vectorised torch (a per-pixel binning, finer than tiles: for
the small triangles of typical meshes it visits the fewest candidate pairs), evaluated, and reduced
to pixels by `index_add` (sums of log(1 - D)) and a per-pixel max-shifted softmax. Pairs are
processed in chunks of at most `max_pairs` (a chunk holds whole triangles, so a single triangle of
more than `max_pairs` bbox pixels still forms one chunk of at most H x W pairs). Silhouettes have an
analytic backward (`_SilhouetteLogFree`): the forward pass keeps ~40 bytes per kept pair and the
backward pass is two scatter-adds, nothing recomputed. Colour images go through autograd; with more
than one chunk and gradients required, each chunk is recomputed in the backward pass
(`torch.utils.checkpoint`) so memory stays bounded by one chunk. `_reference_soft_silhouette` and
`_reference_soft_render` are the slow, obviously-correct dense versions the tests compare against
(values, and for silhouettes the gradients too).

Not handled: near-plane clipping (a triangle with a vertex at or behind the camera plane is dropped
entirely) and textures (per-vertex or per-face attributes only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from ..cameras import Cameras

# SoftRas defaults (soft_renderer/renderer.py SoftRenderer, soft_rasterize.py), unless noted.
SIGMA_SILHOUETTE = 1e-4  # examples/recon/train.py: silhouettes of 64^2 ShapeNet renderings
SIGMA_COLOUR = 1e-5      # SoftRenderer(sigma_val=1e-5)
GAMMA = 1e-4             # SoftRenderer(gamma_val=1e-4)
EPS_BACKGROUND = 1e-3    # SoftRenderer(eps=1e-3): background logit eps / gamma
DIST_EPS = 1e-4          # SoftRenderer(dist_eps=1e-4): pairs with D below this are dropped
NEAR, FAR = 1.0, 100.0   # SoftRenderer(near=1, far=100)
MAX_PAIRS = 1 << 18      # colour pairs per chunk: ~0.9 kB of autograd state each
SILHOUETTE_MAX_PAIRS = 1 << 20  # silhouette pairs per batch: ~0.3 kB of temporaries each

# Columns of the per-face table gathered for every pair (pixel units).
# Components in separate (N, 3) groups: elementwise ops then avoid reductions over a size-2 axis.
_VX, _VY = slice(0, 3), slice(3, 6)     # the three projected vertices v_k
_EX, _EY = slice(6, 9), slice(9, 12)    # edges e_k = v_{k+1} - v_k
_INV_LEN2 = slice(12, 15)  # 1 / |e_k|^2 (0 for a zero-length edge)
_INV_AREA = 15             # 1 / (2 * signed area); 0 for a degenerate triangle
_INV_Z = slice(16, 19)     # 1 / camera z of each vertex
_TABLE_COLUMNS = 19


# ---------------------------------------------------------------------------------------- public
def soft_silhouette(vertices: Tensor, faces: Tensor, cameras: Cameras, *,
                    sigma: float = SIGMA_SILHOUETTE, dist_eps: float = DIST_EPS,
                    max_pairs: int = SILHOUETTE_MAX_PAIRS) -> Tensor:
    """SoftRas probabilistic silhouettes A = 1 - prod_j (1 - D_j).

    Args:
        vertices: (B, V, 3) or (V, 3) world-space vertices of B meshes sharing `faces`;
            differentiable.
        faces: (F, 3) integer vertex indices.
        cameras: 1 or B cameras (broadcast against the meshes); the image size is theirs.
            Differentiable too if their K / world_to_camera require grad.
        sigma: sharpness in NDC^2 (the image width spans 2 NDC units); sigma -> 0 is the hard mask
            of pixel centres covered by a triangle.
        dist_eps: a triangle is ignored at pixels outside it where D_j < dist_eps.
        max_pairs: pixel-triangle pairs evaluated at once (bounds the temporaries, not a result
            change).
    Returns:
        (B, H, W) silhouettes in [0, 1], on the vertices' device and dtype; differentiable once
        (analytic backward, see `_SilhouetteLogFree`).
    """
    scene = _build_scene(vertices, faces, cameras, sigma, dist_eps)
    log_free = _SilhouetteLogFree.apply(scene.corners, scene, max(1, int(max_pairs)))
    return -torch.expm1(log_free).reshape(scene.B, scene.H, scene.W)


def soft_render(vertices: Tensor, faces: Tensor, cameras: Cameras, attributes: Tensor | None = None,
                *, face_attributes: Tensor | None = None, sigma: float = SIGMA_COLOUR,
                gamma: float = GAMMA, eps: float = EPS_BACKGROUND, near: float = NEAR,
                far: float = FAR, background: float | Tensor = 0.0, double_sided: bool = True,
                perspective_correct: bool = True, dist_eps: float = DIST_EPS,
                max_pairs: int = MAX_PAIRS) -> dict[str, Tensor]:
    """SoftRas colour image (softmax depth aggregation) and alpha (soft silhouette).

    Args:
        vertices: (B, V, 3) or (V, 3) world-space vertices; differentiable.
        faces: (F, 3) integer vertex indices.
        cameras: 1 or B cameras (broadcast against the meshes).
        attributes: (B, V, C), (1, V, C) or (V, C) per-vertex values (colours, normals, ...),
            interpolated with the pixel's clipped barycentrics (SoftRas's `vertex` texture mode);
            differentiable. None (and no `face_attributes`): white, C = 3.
        face_attributes: (B, F, C), (1, F, C) or (F, C) per-face values instead; differentiable.
        sigma: silhouette sharpness in NDC^2, as in `soft_silhouette`.
        gamma: softmax temperature on normalised depth; gamma -> 0 is a z-buffer.
        eps: background logit is eps / gamma (the background's normalised depth).
        near, far: depth normalisation z_j = (far - z) / (far - near); pairs with z outside
            [near, far] do not colour the pixel (they still count in the alpha).
        background: float or (C,) background value.
        double_sided: False drops triangles facing away from the camera from the colour.
        perspective_correct: interpolate attributes with perspective-corrected barycentrics
            (True, like nvdiffrast / PyTorch3D) or the screen-space ones (False, like SoftRas).
            Depth is always perspective-correct.
        dist_eps, max_pairs: as in `soft_silhouette`.
    Returns:
        dict with image (B, H, W, C) and alpha (B, H, W) in [0, 1]; both differentiable w.r.t.
        vertices (through D_j, the depths and the barycentrics) and attributes.
    """
    scene = _build_scene(vertices, faces, cameras, sigma, dist_eps)
    colours = _face_colour_table(scene, faces, attributes, face_attributes)
    bg = torch.as_tensor(background, dtype=scene.table.dtype, device=scene.table.device)
    options = _ColourOptions(gamma, eps, near, far, double_sided, perspective_correct)

    def chunk(s: _Scene, f0: int, f1: int) -> tuple[Tensor, ...]:
        return _colour_chunk(s, f0, f1, colours, options)

    log_free, shift, den, num = _run_chunks(scene, max_pairs, chunk, _colour_combine, colours)
    bg_weight = torch.exp(eps / gamma - shift)
    image = (num + bg_weight[:, None] * bg) / (den + bg_weight)[:, None]
    shape = (scene.B, scene.H, scene.W)
    return {"image": image.reshape(*shape, -1), "alpha": -torch.expm1(log_free).reshape(shape)}


# ---------------------------------------------------------------------------------------- scene
@dataclass
class _Scene:
    """Projected triangles of a batch, their per-face table and candidate pixels.

    table: (B * F, 19) per-face geometry in pixels (see the column slices above); differentiable.
    corners: (B * F, 3, 2) projected vertices in pixels (what `table` is made of); differentiable.
    front: (B * F,) bool, the face is wound clockwise on screen (faces the camera when its
        vertices run counter-clockwise around the outward normal).
    x0, y0, wx, counts: (B * F,) int64 candidate box (first column, first row, width) and its
        pixel count (0 for faces off screen or with a vertex at or behind the camera plane).
    starts: (B * F + 1,) int64 exclusive cumulative counts: face k's pairs are
        [starts[k], starts[k + 1]).
    """

    table: Tensor
    corners: Tensor
    front: Tensor
    x0: Tensor
    y0: Tensor
    wx: Tensor
    counts: Tensor
    starts: Tensor
    B: int
    F: int
    H: int
    W: int
    sigma: float      # NDC^2
    ndc_scale: float  # (NDC units per pixel)^2
    r2_px: float      # cut-off radius^2 in pixels^2


def _build_scene(vertices: Tensor, faces: Tensor, cameras: Cameras, sigma: float,
                 dist_eps: float) -> _Scene:
    """Project the meshes, tabulate their faces and find each face's candidate pixels."""
    if sigma <= 0 or not 0 < dist_eps < 0.5:
        raise ValueError(f"need sigma > 0 and 0 < dist_eps < 0.5, got {sigma}, {dist_eps}")
    vertices, cameras = _broadcast(vertices, cameras)
    B, H, W = vertices.shape[0], cameras.height, cameras.width
    faces = faces.to(device=vertices.device, dtype=torch.long)
    uv, z = cameras.project(vertices)
    tri_uv, tri_z = uv[:, faces], z[:, faces]  # (B, F, 3, 2), (B, F, 3)
    table = _face_table(tri_uv, tri_z).reshape(B * faces.shape[0], _TABLE_COLUMNS)
    ndc_scale = (2.0 / W) ** 2
    r2_px = sigma * math.log(1.0 / dist_eps - 1.0) / ndc_scale
    with torch.no_grad():
        valid = (tri_z > 0).all(-1) & torch.isfinite(tri_uv).all(-1).all(-1)
        x0, y0, wx, counts = (t.flatten() for t in _candidate_boxes(tri_uv, valid,
                                                                    math.sqrt(r2_px), H, W))
    front = (table[:, _INV_AREA] < 0).detach()  # see _face_table
    corners = tri_uv.reshape(B * faces.shape[0], 3, 2)
    return _Scene(table, corners, front, x0, y0, wx, counts, _exclusive_cumsum(counts), B,
                  faces.shape[0], H, W, sigma, ndc_scale, r2_px)


def _exclusive_cumsum(counts: Tensor) -> Tensor:
    """(N + 1,) exclusive cumulative sum of (N,) counts, starting at 0."""
    return F.pad(torch.cumsum(counts, 0), (1, 0))


def _broadcast(vertices: Tensor, cameras: Cameras) -> tuple[Tensor, Cameras]:
    """Vertices (B, V, 3) and B cameras on the vertices' device and dtype, broadcasting a batch of 1."""
    if vertices.dim() == 2:
        vertices = vertices[None]
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be (B, V, 3) or (V, 3), got {tuple(vertices.shape)}")
    Bv, Bc = vertices.shape[0], len(cameras)
    B = max(Bv, Bc)
    if Bv not in (1, B) or Bc not in (1, B):
        raise ValueError(f"{Bv} meshes and {Bc} cameras: batch sizes must match or be 1")
    cameras = cameras.to(device=vertices.device, dtype=vertices.dtype)
    if Bc != B:
        cameras = Cameras(cameras.K.expand(B, 3, 3), cameras.world_to_camera.expand(B, 4, 4),
                          cameras.width, cameras.height)
    return vertices.expand(B, -1, -1), cameras


def _face_table(tri_uv: Tensor, tri_z: Tensor) -> Tensor:
    """(..., 19) per-face columns from (..., 3, 2) projected vertices and (..., 3) camera z.

    The signed area is (v1 - v0) x (v2 - v0) in (u right, v down) pixels: a triangle wound
    counter-clockwise around its outward normal has negative area when it faces the camera.
    """
    edges = tri_uv.roll(-1, dims=-2) - tri_uv  # e_k = v_{k+1} - v_k
    len2 = (edges * edges).sum(-1)
    inv_len2 = torch.where(len2 > 0, 1.0 / len2.clamp_min(1e-30), torch.zeros_like(len2))
    area2 = edges[..., 0, 0] * edges[..., 2, 1] - edges[..., 0, 1] * edges[..., 2, 0]
    area2 = -area2  # e0 x (v2 - v0) = e0 x (-e2)
    tiny = area2.abs() <= 1e-12 * len2.amax(-1).clamp_min(1e-30)
    inv_area = torch.where(tiny, torch.zeros_like(area2), 1.0 / torch.where(tiny, 1.0, area2))
    inv_z = 1.0 / tri_z.clamp_min(1e-12)
    return torch.cat([tri_uv[..., 0], tri_uv[..., 1], edges[..., 0], edges[..., 1], inv_len2,
                      inv_area[..., None], inv_z], -1)


def _candidate_boxes(tri_uv: Tensor, valid: Tensor, radius: float, H: int,
                     W: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pixels whose centres lie within the face's bounding box grown by `radius` (pixels).

    Returns int64 (B, F) first column x0, first row y0, box width wx and pixel count (0 for faces
    off screen or invalid).
    """
    lo = tri_uv.amin(-2).clamp(-2.0 * (W + H), 2.0 * (W + H))  # keep the int conversion in range
    hi = tri_uv.amax(-2).clamp(-2.0 * (W + H), 2.0 * (W + H))
    # pixel j (centre j + 0.5) is a candidate when lo - r <= j + 0.5 <= hi + r
    first = torch.ceil(lo - radius - 0.5).long().clamp_min(0)
    last_x = torch.floor(hi[..., 0] + radius - 0.5).long().clamp_max(W - 1)
    last_y = torch.floor(hi[..., 1] + radius - 0.5).long().clamp_max(H - 1)
    wx = (last_x - first[..., 0] + 1).clamp_min(0)
    wy = (last_y - first[..., 1] + 1).clamp_min(0)
    counts = torch.where(valid, wx * wy, torch.zeros_like(wx))
    return first[..., 0], first[..., 1], wx, counts


# ---------------------------------------------------------------------------------------- chunks
def _chunk_bounds(starts: Tensor, max_pairs: int) -> list[tuple[int, int]]:
    """Split faces [0, N) into ranges of whole faces holding at most `max_pairs` pairs each
    (a single face with more pairs forms its own chunk); empty ranges are skipped."""
    total = int(starts[-1])
    bounds, f0, n = [], 0, starts.numel() - 1
    while f0 < n and int(starts[f0]) < total:
        f1 = int(torch.searchsorted(starts, starts[f0] + max_pairs, right=True)) - 1
        f1 = min(max(f1, f0 + 1), n)
        bounds.append((f0, f1))
        f0 = f1
    return bounds


def _run_chunks(scene: _Scene, max_pairs: int, chunk: Callable, combine: Callable,
                *extra: Tensor) -> tuple[Tensor, ...]:
    """Evaluate `chunk(scene, f0, f1)` per face range and fold the per-pixel results with `combine`.

    With several chunks and gradients enabled each chunk is checkpointed (recomputed in backward).
    """
    bounds = _chunk_bounds(scene.starts, max(1, int(max_pairs)))
    if not bounds:  # nothing on screen: one empty chunk gives correctly shaped zeros
        bounds = [(0, 0)]
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in (scene.table, *extra))
    result = None
    for f0, f1 in bounds:
        if grads and len(bounds) > 1:  # non-reentrant: gradients reach captured tensors too
            part = checkpoint(chunk, scene, f0, f1, use_reentrant=False)
        else:
            part = chunk(scene, f0, f1)
        result = part if result is None else combine(result, part)
    return result


def _pairs(scene: _Scene, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate pairs of the (M,) int64 `faces` (flat indices into B * F): face index (N,), flat
    pixel index (N,) into (B * H * W), and the pixel centres (N, 2) in the table's dtype."""
    device = scene.table.device
    counts = scene.counts[faces]
    starts = _exclusive_cumsum(counts)
    n = int(starts[-1])
    local_face = torch.repeat_interleave(torch.arange(faces.numel(), device=device), counts,
                                         output_size=n)
    face = faces[local_face]
    local = torch.arange(n, device=device) - starts[local_face]
    wx = scene.wx[face]
    px = scene.x0[face] + local % wx
    py = scene.y0[face] + torch.div(local, wx, rounding_mode="floor")
    batch = torch.div(face, scene.F, rounding_mode="floor")
    pixel = (batch * scene.H + py) * scene.W + px
    centres = torch.stack([px, py], -1).to(scene.table.dtype) + 0.5
    return face, pixel, centres


def _pair_geometry(rows: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Squared distance (pixels^2) from p to the triangle boundary, inside flag, barycentrics.

    Args:
        rows: (N, 19) face-table rows; p: (N, 2) pixel centres.
    Returns:
        d2 (N,), inside (N,) bool (strictly inside), bary (N, 3) unclipped screen barycentrics.
    """
    ex, ey = rows[:, _EX], rows[:, _EY]
    pvx, pvy = p[:, :1] - rows[:, _VX], p[:, 1:] - rows[:, _VY]  # (N, 3): p - v_k
    t = ((pvx * ex + pvy * ey) * rows[:, _INV_LEN2]).clamp(0.0, 1.0)
    rx, ry = pvx - t * ex, pvy - t * ey  # p minus its closest point on edge k
    d2 = (rx * rx + ry * ry).min(-1).values
    cross = ex * pvy - ey * pvx  # edge function of edge k (v_k v_{k+1})
    bary = cross[:, [1, 2, 0]] * rows[:, _INV_AREA, None]  # vertex k is opposite edge k + 1
    inside = (bary > 0).all(-1)
    return d2, inside, bary


def _signed_logits(scene: _Scene, d2: Tensor, inside: Tensor) -> tuple[Tensor, Tensor]:
    """x = delta d^2 / sigma (NDC) and the keep mask (inside, or closer than the cut-off)."""
    x = torch.where(inside, d2, -d2) * (scene.ndc_scale / scene.sigma)
    keep = inside | (d2 < scene.r2_px)
    return x, keep


def _log_free(scene: _Scene, pixel: Tensor, x: Tensor, keep: Tensor) -> Tensor:
    """(B * H * W,) sum over kept pairs of log(1 - D_j) = logsigmoid(-x_j)."""
    log_free = torch.where(keep, F.logsigmoid(-x), torch.zeros_like(x))
    out = torch.zeros(scene.B * scene.H * scene.W, dtype=x.dtype, device=x.device)
    return out.index_add(0, pixel, log_free)


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
    This is the gradient autograd takes through `_pair_geometry` up to float rounding (autograd
    also differentiates t, whose terms carry the factor r . e, zero at the optimum but for rounding).
    The inside flag, the cut-off and the nearest edge are piecewise constant, as in autograd.
    """

    @staticmethod
    def forward(ctx, corners: Tensor, scene: _Scene, max_pairs: int) -> Tensor:  # noqa: D102
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


def _silhouette_batches(scene: _Scene, columns: Tensor, max_pairs: int) -> Iterator[tuple[Tensor, ...]]:
    """Yield the candidate pairs in batches of at most `max_pairs` (or one face's) as broadcastable
    (columns (19, ...), px (...), py (...), face (...), pixel (...)): the faces' table columns
    (`columns` is the (19, B * F) transposed table), pixel centres, flat face and pixel indices.

    Faces whose candidate boxes share a small shape (a x b pixels) form (n, a * b) batches by
    broadcasting a box of offsets against the faces' rows, with no per-pair index arithmetic or
    gathers (most faces of a 1280-face template at 64^2: boxes of 3-7 pixels a side); the others go
    through `_pairs`. Both evaluate each pair with the same arithmetic; only the order in which
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
    for i0, i1 in _chunk_bounds(_exclusive_cumsum(counts[rest]), max_pairs):
        face, pixel, centres = _pairs(scene, rest[i0:i1])
        yield columns.index_select(1, face), centres[:, 0], centres[:, 1], face, pixel


def _silhouette_pairs(scene: _Scene, columns: Tensor, px: Tensor, py: Tensor, face: Tensor, pixel: Tensor,
                      log_free: Tensor, grads: bool) -> tuple[Tensor, ...] | None:
    """Add a batch of pairs' log(1 - D) (see `_log_free`) to `log_free` (P,) in place; with `grads`,
    return what `_SilhouetteLogFree.backward` needs of the kept pairs: pixel (K,), flat corner
    indices a and b (K,) into (B * F * 3) of the nearest edge v_a v_b, and (K, 2)
    d log(1 - D) / d v_a and d v_b. Arguments as `_silhouette_batches` yields them.

    The same arithmetic as `_pair_geometry`, with the edge axis first: (3, ...) arrays keep the
    pairs on the contiguous inner axis, where broadcasting a face's value over its pixels is a
    vectorised loop (a trailing axis of 3 made every elementwise op a loop of 3).
    """
    ex, ey = columns[_EX], columns[_EY]  # (3, ...) edges e_k
    pvx, pvy = px - columns[_VX], py - columns[_VY]  # p - v_k
    t = ((pvx * ex + pvy * ey) * columns[_INV_LEN2]).clamp(0.0, 1.0)
    rx, ry = pvx - t * ex, pvy - t * ey  # p minus its closest point on edge k
    d2, edge = (rx * rx + ry * ry).min(0)
    inside = ((ex * pvy - ey * pvx) * columns[_INV_AREA] > 0).all(0)  # edge functions x inv_area
    x, keep = _signed_logits(scene, d2, inside)
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


# ---------------------------------------------------------------------------------------- colour
@dataclass(frozen=True)
class _ColourOptions:
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


def _face_colour_table(scene: _Scene, faces: Tensor, attributes: Tensor | None,
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


def _colour_chunk(scene: _Scene, f0: int, f1: int, colours: Tensor,
                  opt: _ColourOptions) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-pixel pieces of the chunk: log_free (P,) as in `_log_free`, and the softmax's shift m
    (P,), sum_j e_j (P,) and sum_j e_j C_j (P, C), with e_j = D_j exp(z_j / gamma - m);
    m >= eps / gamma is detached (it cancels in the ratio)."""
    face, pixel, centres = _pairs(scene, torch.arange(f0, f1, device=scene.table.device))
    rows = scene.table.index_select(0, face)
    d2, inside, bary = _pair_geometry(rows, centres)
    x, keep = _signed_logits(scene, d2, inside)
    log_free = _log_free(scene, pixel, x, keep)
    keep = keep & (rows[:, _INV_AREA] != 0)  # a degenerate triangle has no surface to colour
    if not opt.double_sided:
        keep = keep & scene.front[face]
    idx = keep.nonzero().squeeze(1)
    face, pixel, rows, bary, x = face[idx], pixel[idx], rows[idx], bary[idx], x[idx]

    w = bary.clamp(0.0, 1.0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-5)  # SoftRas's barycentric_clip
    w_over_z = w * rows[:, _INV_Z]
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


def _colour_combine(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Fold two chunks' (log_free, shift, den, num) into one, rescaling to the larger shift."""
    shift = torch.maximum(a[1], b[1])
    sa, sb = torch.exp(a[1] - shift), torch.exp(b[1] - shift)
    return (a[0] + b[0], shift, a[2] * sa + b[2] * sb, a[3] * sa[:, None] + b[3] * sb[:, None])


# ---------------------------------------------------------------------------------------- reference
def _reference_project(vertices: Tensor, faces: Tensor,
                       cameras: Cameras) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dense-reference helper: face corners in NDC (B, F, 3, 2), camera z (B, F, 3), pixel centres
    in NDC (H * W, 2), and whether each face faces the camera (B, F) by its 3D normal."""
    vertices, cameras = _broadcast(vertices, cameras)
    faces = faces.to(device=vertices.device, dtype=torch.long)
    uv, z = cameras.project(vertices)
    W = cameras.width
    centre = torch.tensor([W / 2, cameras.height / 2], dtype=uv.dtype, device=uv.device)
    pixels = cameras.pixel_centers().reshape(-1, 2)
    cam = vertices @ cameras.R.transpose(1, 2) + cameras.t[:, None, :]
    a, b, c = cam[:, faces].unbind(2)  # (B, F, 3) camera-space corners
    front = (torch.linalg.cross(b - a, c - a) * (a + b + c)).sum(-1) < 0
    return (uv - centre)[:, faces] * (2.0 / W), z[:, faces], (pixels - centre) * (2.0 / W), front


def _reference_face(tri: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Signed squared distance (B, P) (NDC^2, + inside), barycentrics (B, P, 3) of pixels p (P, 2)
    for one triangle per batch entry, tri (B, 3, 2), by solving the 2x2 system; and (B,) whether the
    triangle has an area."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    M = torch.stack([b - a, c - a], -1)  # (B, 2, 2): columns b - a, c - a
    rhs = (p[None] - a[:, None]).transpose(1, 2)  # (B, 2, P)
    det = M[:, 0, 0] * M[:, 1, 1] - M[:, 0, 1] * M[:, 1, 0]
    ok = det.abs() > 1e-14
    eye = torch.eye(2, dtype=M.dtype, device=M.device)
    sol = torch.linalg.solve(torch.where(ok[:, None, None], M, eye), rhs)
    l1, l2 = sol[:, 0], sol[:, 1]
    bary = torch.stack([1 - l1 - l2, l1, l2], -1)
    inside = (bary > 0).all(-1) & ok[:, None]
    dists = []
    for s, t in ((a, b), (b, c), (c, a)):
        seg = t - s
        length2 = (seg * seg).sum(-1).clamp_min(1e-30)
        u = ((p[None] - s[:, None]) * seg[:, None]).sum(-1) / length2[:, None]
        closest = s[:, None] + u.clamp(0, 1)[..., None] * seg[:, None]
        dists.append(((p[None] - closest) ** 2).sum(-1))
    d2 = torch.stack(dists).amin(0)
    return torch.where(inside, d2, -d2), bary, ok


def _reference_soft_silhouette(vertices: Tensor, faces: Tensor, cameras: Cameras, *,
                               sigma: float = SIGMA_SILHOUETTE, dist_eps: float = DIST_EPS) -> Tensor:
    """Slow dense reference of `soft_silhouette`: every pixel against every face, product of (1 - D)."""
    tri, z, p, _ = _reference_project(vertices, faces, cameras)
    cut = sigma * math.log(1 / dist_eps - 1)
    free = torch.ones(tri.shape[0], p.shape[0], dtype=tri.dtype, device=tri.device)
    for j in range(tri.shape[1]):
        signed, _, _ = _reference_face(tri[:, j], p)
        D = torch.sigmoid(signed / sigma)
        valid = (z[:, j] > 0).all(-1)[:, None] & ((signed > 0) | (-signed < cut))
        free = free * torch.where(valid, 1 - D, torch.ones_like(D))
    return (1 - free).reshape(-1, cameras.height, cameras.width)


def _reference_soft_render(vertices: Tensor, faces: Tensor, cameras: Cameras,
                           attributes: Tensor | None = None, *, face_attributes: Tensor | None = None,
                           sigma: float = SIGMA_COLOUR, gamma: float = GAMMA,
                           eps: float = EPS_BACKGROUND, near: float = NEAR, far: float = FAR,
                           background: float | Tensor = 0.0, double_sided: bool = True,
                           perspective_correct: bool = True, dist_eps: float = DIST_EPS) -> dict:
    """Slow dense reference of `soft_render`: a softmax over [background, every face] per pixel."""
    tri, z, p, front = _reference_project(vertices, faces, cameras)
    B, nF = tri.shape[:2]
    faces = faces.to(device=tri.device, dtype=torch.long)
    if face_attributes is not None:
        fa = face_attributes if face_attributes.dim() == 3 else face_attributes[None]
        corner = fa.to(tri.dtype).expand(B, -1, -1)[:, :, None, :].expand(-1, -1, 3, -1)
    else:
        ones = torch.ones(1, int(faces.max()) + 1, 3, device=tri.device)
        va = ones if attributes is None else attributes
        va = va if va.dim() == 3 else va[None]
        corner = va.to(tri.dtype).expand(B, -1, -1)[:, faces]
    cut = sigma * math.log(1 / dist_eps - 1)
    logits, colours = [], []
    free = torch.ones(B, p.shape[0], dtype=tri.dtype, device=tri.device)
    for j in range(nF):
        signed, bary, area = _reference_face(tri[:, j], p)
        D = torch.sigmoid(signed / sigma)
        valid = (z[:, j] > 0).all(-1)[:, None] & ((signed > 0) | (-signed < cut))
        free = free * torch.where(valid, 1 - D, torch.ones_like(D))
        w = bary.clamp(0, 1)
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-5)
        depth = 1 / (w / z[:, j, None, :]).sum(-1)
        zn = (far - depth) / (far - near)
        ok = valid & area[:, None] & (depth >= near) & (depth <= far)
        ok = ok & (front[:, j, None] | double_sided)
        logit = F.logsigmoid(signed / sigma) + zn / gamma
        logits.append(torch.where(ok, logit, torch.full_like(D, -math.inf)))
        pw = w / z[:, j, None, :] * depth[..., None] if perspective_correct else w
        colours.append(torch.einsum("bpk,bkc->bpc", pw, corner[:, j]))
    all_logits = torch.cat([torch.full((B, p.shape[0], 1), eps / gamma, dtype=tri.dtype,
                                       device=tri.device),
                            torch.stack(logits, -1)], -1)
    weight = torch.softmax(all_logits, -1)  # (B, P, 1 + F)
    bg = torch.as_tensor(background, dtype=tri.dtype, device=tri.device).expand(colours[0].shape[-1])
    all_colours = torch.cat([bg.expand(B, p.shape[0], 1, -1), torch.stack(colours, 2)], 2)
    image = (weight[..., None] * all_colours).sum(2)
    H, W = cameras.height, cameras.width
    return {"image": image.reshape(B, H, W, -1), "alpha": (1 - free).reshape(B, H, W)}
