"""Batched pinhole cameras in the OpenCV convention, and the rays they cast.

Conventions (DESIGN.md): `K` is 3x3 in pixels with pixel centres at integer + 0.5 (pixel (row i,
column j) has centre (u, v) = (j + 0.5, i + 0.5)); `world_to_camera` is a 4x4 rigid [R|t]; the camera
looks down +z with x right and y down. Rays are unit length in world space. All cameras of a batch
share one image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from .errors import InputError


def _as_tensor(x, dtype=None, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype=dtype or x.dtype, device=device or x.device)
    return torch.as_tensor(np.asarray(x), dtype=dtype or torch.float32, device=device)


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class Cameras:
    """A batch of B pinhole cameras sharing one image size.

    Attributes:
        K: (B, 3, 3) intrinsics in pixels.
        world_to_camera: (B, 4, 4) rigid transforms [R|t; 0 0 0 1].
        width, height: image size in pixels.
    """

    def __init__(self, K: Tensor, world_to_camera: Tensor, width: int, height: int):
        K = _as_tensor(K)
        world_to_camera = _as_tensor(world_to_camera, dtype=K.dtype, device=K.device)
        if K.dim() == 2:
            K = K[None]
        if world_to_camera.dim() == 2:
            world_to_camera = world_to_camera[None]
        if K.shape[-2:] != (3, 3) or world_to_camera.shape[-2:] != (4, 4):
            raise ValueError(f"K must be (B,3,3) and world_to_camera (B,4,4), got {tuple(K.shape)}, "
                             f"{tuple(world_to_camera.shape)}")
        if K.shape[0] != world_to_camera.shape[0]:
            K = K.expand(world_to_camera.shape[0], 3, 3)
        self.K = K
        self.world_to_camera = world_to_camera
        self.width = int(width)
        self.height = int(height)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, index) -> "Cameras":
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return Cameras(self.K[index], self.world_to_camera[index], self.width, self.height)

    def __repr__(self) -> str:
        return f"Cameras(n={len(self)}, {self.width}x{self.height}, device={self.device})"

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype

    def to(self, device=None, dtype=None) -> "Cameras":
        return Cameras(self.K.to(device=device, dtype=dtype),
                       self.world_to_camera.to(device=device, dtype=dtype), self.width, self.height)

    def downscaled(self, factor: int) -> "Cameras":
        """The same views on images `factor` times smaller per side: pixel (i, j) of the result covers
        pixels factor * (i, j) ... factor * (i, j) + factor - 1 of the original (uv / factor)."""
        if factor < 1 or self.width % factor or self.height % factor:
            raise ValueError(f"cannot downscale {self.width}x{self.height} images by {factor}")
        scale = torch.tensor([1.0 / factor, 1.0 / factor, 1.0], dtype=self.dtype, device=self.device)
        return Cameras(self.K * scale[:, None], self.world_to_camera, self.width // factor, self.height // factor)

    @staticmethod
    def cat(cameras: Sequence["Cameras"]) -> "Cameras":
        """Concatenate batches that share one image size."""
        sizes = {(c.width, c.height) for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"cannot batch cameras of different image sizes {sorted(sizes)}")
        w, h = sizes.pop()
        return Cameras(torch.cat([c.K for c in cameras]),
                       torch.cat([c.world_to_camera for c in cameras]), w, h)

    @property
    def R(self) -> Tensor:
        """(B, 3, 3) world-to-camera rotation."""
        return self.world_to_camera[:, :3, :3]

    @property
    def t(self) -> Tensor:
        """(B, 3) world-to-camera translation."""
        return self.world_to_camera[:, :3, 3]

    @property
    def camera_to_world(self) -> Tensor:
        """(B, 4, 4) inverse of `world_to_camera` (rigid, so no general inverse needed)."""
        Rt = self.R.transpose(1, 2)
        out = torch.zeros_like(self.world_to_camera)
        out[:, :3, :3] = Rt
        out[:, :3, 3] = -(Rt @ self.t[..., None])[..., 0]
        out[:, 3, 3] = 1
        return out

    @property
    def centers(self) -> Tensor:
        """(B, 3) camera centres in world space."""
        return -(self.R.transpose(1, 2) @ self.t[..., None])[..., 0]

    @property
    def forward(self) -> Tensor:
        """(B, 3) world-space unit viewing direction (camera +z)."""
        return self.R[:, 2, :]

    # ------------------------------------------------------------------ projection
    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points to pixels.

        Args:
            points: (B, N, 3) or (N, 3) world points (broadcast over cameras).
        Returns:
            uv: (B, N, 2) pixel coordinates (pixel centres at integer + 0.5).
            depth: (B, N) camera-space z.
        """
        if points.dim() == 2:
            points = points.expand(len(self), *points.shape)
        cam = points @ self.R.transpose(1, 2) + self.t[:, None, :]
        depth = cam[..., 2]
        pix = cam @ self.K.transpose(1, 2)
        uv = pix[..., :2] / pix[..., 2:3]
        return uv, depth

    def unproject(self, uv: Tensor, depth: Tensor) -> Tensor:
        """Inverse of `project`: (B, N, 2) pixels and (B, N) camera-z depths -> (B, N, 3) world points."""
        ones = torch.ones_like(uv[..., :1])
        cam = torch.cat([uv, ones], dim=-1) @ torch.linalg.inv(self.K).transpose(1, 2)
        cam = cam * depth[..., None]
        return (cam - self.t[:, None, :]) @ self.R

    def projection_matrix(self) -> Tensor:
        """(B, 3, 4) projection P = K [R | t] from world points to homogeneous pixels."""
        return self.K @ self.world_to_camera[:, :3, :]

    @staticmethod
    def from_projection(P, width: int, height: int, dtype=torch.float32) -> "Cameras":
        """Decompose (B, 3, 4) or (3, 4) projection matrices P = K [R | t] (any scale or sign).

        K is recovered by an RQ decomposition of P[:, :3] with signs fixed so that K has a positive
        diagonal and K[2, 2] = 1, and R is a proper rotation (det +1).
        """
        P = np.asarray(P.detach().cpu() if isinstance(P, Tensor) else P, dtype=np.float64)
        if P.ndim == 2:
            P = P[None]
        Ks, W2Cs = [], []
        for Pi in P:
            if Pi.shape != (3, 4) or not np.all(np.isfinite(Pi)):
                raise ValueError("projection matrix must be a finite 3x4 matrix")
            M = Pi[:, :3]
            if np.linalg.det(M) < 0:  # P is defined up to scale: pick the sign that gives det R = +1
                Pi = -Pi
                M = -M
            Kr, R = scipy.linalg.rq(M)
            signs = np.diag(np.sign(np.diag(Kr)))  # make diag(K) positive; D @ D = I
            Kr, R = Kr @ signs, signs @ R
            t = np.linalg.solve(Kr, Pi[:, 3])
            scale = Kr[2, 2]
            W2C = np.eye(4)
            W2C[:3, :3], W2C[:3, 3] = R, t
            Ks.append(Kr / scale)
            W2Cs.append(W2C)
        return Cameras(torch.as_tensor(np.stack(Ks), dtype=dtype),
                       torch.as_tensor(np.stack(W2Cs), dtype=dtype), width, height)

    # ------------------------------------------------------------------ rays
    def pixel_centers(self) -> Tensor:
        """(H, W, 2) pixel-centre coordinates (u, v) = (j + 0.5, i + 0.5)."""
        v, u = torch.meshgrid(torch.arange(self.height, device=self.device, dtype=self.dtype),
                              torch.arange(self.width, device=self.device, dtype=self.dtype),
                              indexing="ij")
        return torch.stack([u, v], dim=-1) + 0.5

    def rays(self, uv: Tensor) -> tuple[Tensor, Tensor]:
        """Rays through chosen pixel coordinates.

        Args:
            uv: (B, N, 2) pixel coordinates, or (N, 2) shared by all cameras.
        Returns:
            origins: (B, N, 3) camera centres; directions: (B, N, 3) world-space unit vectors.
        """
        if uv.dim() == 2:
            uv = uv.expand(len(self), *uv.shape)
        ones = torch.ones_like(uv[..., :1])
        d_cam = torch.cat([uv, ones], dim=-1) @ torch.linalg.inv(self.K).transpose(1, 2)
        directions = _normalize(d_cam @ self.R)  # R^T d for row vectors
        origins = self.centers[:, None, :].expand_as(directions)
        return origins, directions

    def image_rays(self) -> tuple[Tensor, Tensor]:
        """Rays for every pixel: origins and directions, each (B, H, W, 3)."""
        uv = self.pixel_centers().reshape(-1, 2)
        o, d = self.rays(uv)
        shape = (len(self), self.height, self.width, 3)
        return o.reshape(shape), d.reshape(shape)

    def patch_pixels(self, top_left: Tensor, k: int) -> Tensor:
        """Pixel centres of k x k patches.

        Args:
            top_left: (B, N, 2) or (N, 2) integer (column, row) of each patch's top-left pixel.
        Returns:
            (B, N, k, k, 2) pixel-centre coordinates, row-major within the patch (dims: row, column).
        """
        rows, cols = torch.meshgrid(torch.arange(k, device=self.device),
                                    torch.arange(k, device=self.device), indexing="ij")
        offsets = torch.stack([cols, rows], dim=-1).to(self.dtype)  # (k, k, 2) as (du, dv)
        return top_left.to(self.dtype)[..., None, None, :] + offsets + 0.5

    def patch_rays(self, top_left: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Rays for k x k pixel patches: origins and directions, each (B, N, k, k, 3)."""
        uv = self.patch_pixels(top_left, k)
        if uv.dim() == 4:
            uv = uv.expand(len(self), *uv.shape)
        B, N = uv.shape[:2]
        o, d = self.rays(uv.reshape(B, -1, 2))
        return o.reshape(B, N, k, k, 3), d.reshape(B, N, k, k, 3)

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def intrinsics_from_fov(fov_deg: float, width: int, height: int) -> Tensor:
        """(3, 3) K with a horizontal field of view `fov_deg`, square pixels, centred principal point."""
        f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
        return torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=torch.float32)

    @staticmethod
    def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0), fov_deg: float = 30.0,
                width: int = 256, height: int = 256) -> "Cameras":
        """Cameras at `eye` (B, 3) or (3,) looking at `target` with world `up` appearing upwards."""
        eye = _as_tensor(eye, dtype=torch.float64).reshape(-1, 3)
        target = _as_tensor(target, dtype=torch.float64).reshape(-1, 3).expand_as(eye)
        up = _as_tensor(up, dtype=torch.float64).reshape(-1, 3).expand_as(eye)
        z = _normalize(target - eye)
        x = torch.linalg.cross(z, up)
        degenerate = x.norm(dim=-1) < 1e-9  # looking straight along `up`: pick any perpendicular
        if degenerate.any():
            alt = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(z)
            x = torch.where(degenerate[:, None], torch.linalg.cross(z, alt), x)
        x = _normalize(x)
        y = torch.linalg.cross(z, x)
        R = torch.stack([x, y, z], dim=1)  # rows are camera axes in world space
        W2C = torch.eye(4, dtype=torch.float64).repeat(len(eye), 1, 1)
        W2C[:, :3, :3] = R
        W2C[:, :3, 3] = -(R @ eye[..., None])[..., 0]
        K = Cameras.intrinsics_from_fov(fov_deg, width, height)
        return Cameras(K.expand(len(eye), 3, 3).clone(), W2C.float(), width, height)

    @staticmethod
    def ring(n_views: int = 24, elevation_deg: float = 30.0, distance: float = 2.732,
             fov_deg: float = 30.0, width: int = 64, height: int = 64,
             azimuth_start_deg: float = 0.0, azimuth_step_deg: float | None = None) -> "Cameras":
        """A ring of cameras around the y axis looking at the origin.

        The defaults are the 24-view ring of the rendered ShapeNet set used by Soft Rasterizer
        (azimuths 15 degrees apart, elevation 30 degrees, distance 2.732, 64x64): `Cameras.ring()`.
        The eye is at distance * (cos(el) sin(az), sin(el), -cos(el) cos(az)) as in SoftRas.
        """
        step = 360.0 / n_views if azimuth_step_deg is None else azimuth_step_deg
        az = torch.deg2rad(azimuth_start_deg + step * torch.arange(n_views, dtype=torch.float64))
        el = torch.full_like(az, math.radians(elevation_deg))
        eye = distance * torch.stack([el.cos() * az.sin(), el.sin(), -el.cos() * az.cos()], dim=-1)
        return Cameras.look_at(eye, fov_deg=fov_deg, width=width, height=height)

    @staticmethod
    def sphere(n_views: int, distance: float = 3.0, fov_deg: float = 30.0, width: int = 256,
               height: int = 256) -> "Cameras":
        """Cameras near-uniformly spread on a sphere (Fibonacci lattice), looking at the origin."""
        i = torch.arange(n_views, dtype=torch.float64) + 0.5
        y = 1 - 2 * i / n_views
        r = torch.sqrt((1 - y * y).clamp_min(0))
        phi = math.pi * (3 - math.sqrt(5)) * i
        eye = distance * torch.stack([r * phi.cos(), y, r * phi.sin()], dim=-1)
        return Cameras.look_at(eye, fov_deg=fov_deg, width=width, height=height)


def check_sees(cameras: Cameras, points: Tensor, source: str = "cameras") -> None:
    """Raise `InputError` naming each camera whose image contains none of `points` ((N, 3) world)."""
    uv, depth = cameras.project(points.to(cameras.dtype))
    inside = ((depth > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= cameras.width)
              & (uv[..., 1] >= 0) & (uv[..., 1] <= cameras.height))
    blind = (~inside.any(dim=1)).nonzero().flatten().tolist()
    if blind:
        raise InputError(f"camera(s) {blind} see none of the object", source)
