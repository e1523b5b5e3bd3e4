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
analytic backward (`softras_silhouette.py`): the forward pass keeps ~40 bytes per kept pair and the
backward pass is two scatter-adds, nothing recomputed. Colour images go through autograd; with more
than one chunk and gradients required, each chunk is recomputed in the backward pass
(`torch.utils.checkpoint`) so memory stays bounded by one chunk. tests/softras_reference.py holds
the slow, obviously-correct dense versions the tests compare against (values, and for silhouettes
the gradients too).

Modules: this one (the model, SoftRas's defaults, `soft_silhouette`, `soft_render`);
`softras_scene.py` (projection, per-face table, candidate pixels, chunks, pair geometry);
`softras_silhouette.py` (silhouettes with the analytic backward); `softras_colour.py` (the
softmax colour aggregation).

Not handled: near-plane clipping (a triangle with a vertex at or behind the camera plane is dropped
entirely) and textures (per-vertex or per-face attributes only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cameras import Cameras
from .softras_colour import ColourOptions, colour_chunk, colour_combine, face_colour_table
from .softras_scene import Scene, build_scene, run_chunks
from .softras_silhouette import silhouette_log_free

# SoftRas defaults (soft_renderer/renderer.py SoftRenderer, soft_rasterize.py), unless noted.
SIGMA_SILHOUETTE = 1e-4  # examples/recon/train.py: silhouettes of 64^2 ShapeNet renderings
SIGMA_COLOUR = 1e-5      # SoftRenderer(sigma_val=1e-5)
GAMMA = 1e-4             # SoftRenderer(gamma_val=1e-4)
EPS_BACKGROUND = 1e-3    # SoftRenderer(eps=1e-3): background logit eps / gamma
DIST_EPS = 1e-4          # SoftRenderer(dist_eps=1e-4): pairs with D below this are dropped
NEAR, FAR = 1.0, 100.0   # SoftRenderer(near=1, far=100)
MAX_PAIRS = 1 << 18      # colour pairs per chunk: ~0.9 kB of autograd state each
SILHOUETTE_MAX_PAIRS = 1 << 20  # silhouette pairs per batch: ~0.3 kB of temporaries each


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
        (analytic backward, see `softras_silhouette.py`).
    """
    scene = build_scene(vertices, faces, cameras, sigma, dist_eps)
    log_free = silhouette_log_free(scene, max_pairs)
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
    scene = build_scene(vertices, faces, cameras, sigma, dist_eps)
    colours = face_colour_table(scene, faces, attributes, face_attributes)
    bg = torch.as_tensor(background, dtype=scene.table.dtype, device=scene.table.device)
    options = ColourOptions(gamma, eps, near, far, double_sided, perspective_correct)

    def chunk(s: Scene, f0: int, f1: int) -> tuple[Tensor, ...]:
        return colour_chunk(s, f0, f1, colours, options)

    log_free, shift, den, num = run_chunks(scene, max_pairs, chunk, colour_combine, colours)
    bg_weight = torch.exp(eps / gamma - shift)
    image = (num + bg_weight[:, None] * bg) / (den + bg_weight)[:, None]
    shape = (scene.B, scene.H, scene.W)
    return {"image": image.reshape(*shape, -1), "alpha": -torch.expm1(log_free).reshape(shape)}
