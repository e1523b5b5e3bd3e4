"""The loss terms every method and network shares: image terms (normals, masks, shading,
silhouettes) and shape regularisers (eikonal, mean curvature, Laplacian, flatten, silhouette
shrink / expand), as pure functions of tensors.

Every term is NaN-proof where its inputs may legitimately hold garbage: pixels outside a mask are
selected with `torch.where`, not multiplied by zero (NaN * 0 is NaN), an empty selection gives an
exact 0 that still carries a (zero) gradient, and norms are `torch.norm`, whose backward is 0 at a
zero vector (a hand-written sqrt of a sum of squares gives 0 / 0 there; tested). Weights are the
caller's: a method writes `w * term`.

Soft Rasterizer's definitions (silhouette IoU, Laplacian, flatten) follow its code
(examples/recon/losses.py, soft_renderer/losses.py):
  - silhouette: L_s = 1 - |A * R|_1 / |A + R - A * R|_1 per image (A rendered, R reference),
    averaged over the batch; the union gets a small eps as in SoftRas (an empty pair scores 1).
  - Laplacian: for every vertex, v_i minus the mean of its edge neighbours; the squared norms are
    SUMMED over the vertices of a mesh (SoftRas's `LaplacianLoss`), then averaged over the batch.
  - flatten: for every edge shared by two faces, theta the angle between the two faces (measured
    between the components of the two opposite "wing" vertices perpendicular to the edge); loss
    (cos theta + 1)^2, 0 for a flat pair and 4 for a folded one, SUMMED over the edges of a mesh,
    averaged over the batch. SoftRas builds its edge list from only the (0, 1) and (1, 2) corners of
    each face and so misses the edges that are the (2, 0) edge of both their faces; we use every
    edge shared by two faces.
"""

from __future__ import annotations

import torch
from torch import Tensor

IOU_EPS = 1e-6      # SoftRas examples/recon/losses.py iou(eps=1e-6)
FLATTEN_EPS = 1e-6  # SoftRas FlattenLoss.forward(eps=1e-6), in world units^2 (objects in [-0.5, 0.5]^3)
BCE_CLAMP = 1e-4    # opacities are clamped to [c, 1 - c] before the log (NeuS, SuperNormal)


# ------------------------------------------------------------------------------------------ helpers
def masked_mean(values: Tensor, weight: Tensor) -> Tensor:
    """sum(weight * values) / max(sum(weight), 1), with values where weight == 0 ignored even when
    they are NaN or infinite.

    Args:
        values: (...) per-pixel values; weight: (...) non-negative weights of the same shape (a bool
            mask or a coverage).
    Returns:
        scalar.
    """
    weight = weight.to(values.dtype)
    picked = torch.where(weight > 0, values, torch.zeros_like(values))
    return (picked * weight).sum() / weight.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------------ image terms
def normal_l1(rendered: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean over weighted pixels of sum_c |rendered - target| ((..., 3) normals, (...) weight)."""
    return masked_mean((rendered - target).abs().sum(-1), weight)


def normal_l2(rendered: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean over weighted pixels of |rendered - target|^2 ((..., 3) normals, (...) weight)."""
    return masked_mean((rendered - target).square().sum(-1), weight)


def shading_l1(rendered: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean over weighted pixels of |rendered - target| ((...) grey values, (...) weight)."""
    return masked_mean((rendered - target).abs(), weight)


def mask_bce(opacity: Tensor, target: Tensor, pixel_weight: Tensor | None = None,
             clamp: float = BCE_CLAMP) -> Tensor:
    """Binary cross-entropy of rendered opacities against target masks, opacities clamped to
    [clamp, 1 - clamp] so that a saturated pixel costs at most -log(clamp).

    Args:
        opacity: (...) rendered opacity / soft mask in [0, 1]; target: (...) in [0, 1].
        pixel_weight: optional (...) weight per pixel (mean of weight * bce).
    """
    opacity = torch.nan_to_num(opacity, nan=0.5).clamp(clamp, 1 - clamp)
    return torch.nn.functional.binary_cross_entropy(opacity, target.to(opacity.dtype), weight=pixel_weight)


def mask_l2(coverage: Tensor, target: Tensor) -> Tensor:
    """Mean over pixels of (coverage - target)^2 (an antialiased silhouette against a mask)."""
    return (coverage - target.to(coverage.dtype)).square().mean()


def soft_iou(rendered: Tensor, reference: Tensor, eps: float = IOU_EPS) -> Tensor:
    """Soft intersection over union of silhouettes.

    Args:
        rendered, reference: (B, H, W) silhouettes in [0, 1].
    Returns:
        (B,) sum(A R) / (sum(A + R - A R) + eps).
    """
    dims = tuple(range(1, rendered.dim()))
    intersection = (rendered * reference).sum(dims)
    union = (rendered + reference - rendered * reference).sum(dims)
    return intersection / (union + eps)


def silhouette_loss(rendered: Tensor, reference: Tensor, eps: float = IOU_EPS) -> Tensor:
    """Scalar L_s = 1 - mean over the batch of `soft_iou` ((B, H, W) inputs)."""
    return 1.0 - soft_iou(rendered, reference, eps).mean()


# ------------------------------------------------------------------------------------------ SDF terms
def eikonal_loss(gradient: Tensor) -> Tensor:
    """Mean over points of (|grad f| - 1)^2 ((N, 3) gradients -> scalar; 0 for no points). A zero
    gradient (a flat region) costs 1 and has a finite gradient."""
    if gradient.numel() == 0:
        return gradient.sum()
    return (gradient.norm(dim=-1) - 1.0).square().mean()


def surface_sdf_loss(distance: Tensor, gradient: Tensor, normals: Tensor, w_distance: float = 1.0,
                     w_normal: float = 1.0) -> Tensor:
    """PHORHUM's L_g on surface samples: mean of w_distance |f| + w_normal |grad f / |grad f| - n|
    ((...,) distances, (..., 3) gradients and true unit normals -> scalar)."""
    direction = torch.nn.functional.normalize(gradient, dim=-1, eps=1e-9)
    return (w_distance * distance.abs() + w_normal * (direction - normals).norm(dim=-1)).mean()


def inside_label_loss(distance: Tensor, inside: Tensor, sharpness: Tensor | float) -> Tensor:
    """PHORHUM's L_l: mean binary cross-entropy of the inside labels against sigmoid(-k f)
    ((...,) distances and bool labels, k > 0 the sharpness) -> scalar."""
    return torch.nn.functional.binary_cross_entropy_with_logits(-sharpness * distance, inside.to(distance.dtype))


def eikonal_residual_loss(residual: Tensor) -> Tensor:
    """Mean of residual^2 for residuals |grad f| - 1 that a renderer computed ((M,) -> scalar; 0
    for none)."""
    return residual.square().mean() if residual.numel() else residual.sum()


def shrink_loss(inside_values: Tensor, margin: float) -> Tensor:
    """Silhouette shrink (Wu et al.): mean of (margin - f)^+ over SDF values f < 0 that lie under a
    pixel the mesh covers but the mask does not; raising them lifts the surface off the pixel.
    (P,) -> scalar; 0 for none."""
    if inside_values.numel() == 0:
        return inside_values.sum()
    return (margin - inside_values).clamp_min(0.0).mean()


def expand_loss(lowest_values: Tensor, margin: float) -> Tensor:
    """Silhouette expand (Wu et al.): mean of (f + margin)^+ over the lowest SDF value along each ray
    of a pixel the mask wants but the mesh misses; lowering it grows the surface out to the ray.
    (R,) -> scalar; 0 for none."""
    if lowest_values.numel() == 0:
        return lowest_values.sum()
    return (lowest_values + margin).clamp_min(0.0).mean()


# ------------------------------------------------------------------------------------------ mesh terms
def mesh_area(vertices: Tensor, faces: Tensor) -> Tensor:
    """Total area of a triangle mesh ((V, 3), (F, 3) -> scalar). Its gradient with respect to the
    vertices is the mean-curvature normal (times the vertex area), so descending it is mean-
    curvature flow: the curvature regulariser of Wu et al. Degenerate triangles add 0 and a finite
    gradient."""
    tri = vertices.index_select(0, faces.reshape(-1)).reshape(*faces.shape, 3)
    return 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1).sum()


def laplacian_vectors(vertices: Tensor, edges: Tensor) -> Tensor:
    """Uniform Laplacian v_i - mean of v_i's neighbours.

    Args:
        vertices: (B, V, 3) positions; edges: (E, 2) int64 undirected edges.
    Returns:
        (B, V, 3); 0 for a vertex without neighbours.
    """
    edges = edges.to(vertices.device)
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    V = vertices.shape[1]
    degree = torch.zeros(V, dtype=vertices.dtype, device=vertices.device)
    degree = degree.index_add(0, src, torch.ones_like(src, dtype=vertices.dtype))
    sums = torch.zeros_like(vertices).index_add(1, src, vertices[:, dst])
    mean = sums / degree.clamp_min(1.0)[None, :, None]
    return torch.where(degree[None, :, None] > 0, vertices - mean, torch.zeros_like(vertices))


def laplacian_loss(vertices: Tensor, edges: Tensor) -> Tensor:
    """Scalar: mean over the batch of sum_i |v_i - mean of neighbours|^2 ((B, V, 3) vertices)."""
    return laplacian_vectors(vertices, edges).pow(2).sum((1, 2)).mean()


def dihedral_cosines(vertices: Tensor, wings: Tensor, eps: float = FLATTEN_EPS) -> Tensor:
    """cos of the angle between the two faces on each wing edge (-1 flat, +1 folded shut).

    Args:
        vertices: (B, V, 3); wings: (W, 4) int64 [v0, v1, v2, v3], edge v0-v1, opposite v2, v3.
        eps: added to squared lengths (SoftRas's guard against degenerate faces).
    Returns:
        (B, W) cosines of the angle between the components of v2 - v0 and v3 - v0 perpendicular
        to the edge.
    """
    v0, v1, v2, v3 = vertices[:, wings.to(vertices.device)].unbind(2)  # each (B, W, 3)
    edge = v1 - v0
    inv_len2 = 1.0 / ((edge * edge).sum(-1, keepdim=True) + eps)

    def perpendicular(wing: Tensor) -> Tensor:
        return wing - edge * ((wing * edge).sum(-1, keepdim=True) * inv_len2)

    p2, p3 = perpendicular(v2 - v0), perpendicular(v3 - v0)
    norms = torch.sqrt(((p2 * p2).sum(-1) + eps) * ((p3 * p3).sum(-1) + eps))
    return (p2 * p3).sum(-1) / norms


def flatten_loss(vertices: Tensor, wings: Tensor, eps: float = FLATTEN_EPS) -> Tensor:
    """Scalar: mean over the batch of sum over wing edges of (cos theta + 1)^2 ((B, V, 3) vertices)."""
    return (dihedral_cosines(vertices, wings, eps) + 1.0).pow(2).sum(-1).mean()
