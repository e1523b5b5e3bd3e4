"""Input views at a lower resolution, for methods that fit coarse to fine.

One job: `resample_views` shrinks the cameras (intrinsics scaled) and area-averages the per-view
targets (masks, normal maps, images) to a chosen width, so a coarse level compares renders with
images that hold the same amount of detail. Normal maps are re-normalised after averaging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cameras import Cameras


def resample_views(cameras: Cameras, targets: dict[str, torch.Tensor],
                   width: int) -> tuple[Cameras, dict[str, torch.Tensor]]:
    """Cameras and targets ((B, H, W) or (B, H, W, C)) at `width` pixels across (never enlarged)."""
    if width >= cameras.width:
        return cameras, dict(targets)
    height = max(1, round(cameras.height * width / cameras.width))
    K = cameras.K.clone()
    K[:, 0] *= width / cameras.width
    K[:, 1] *= height / cameras.height
    small = Cameras(K, cameras.world_to_camera, width, height)
    out = {}
    for name, value in targets.items():
        image = value[:, None] if value.dim() == 3 else value.permute(0, 3, 1, 2)
        image = F.interpolate(image, size=(height, width), mode="area")
        out[name] = image[:, 0] if value.dim() == 3 else image.permute(0, 2, 3, 1)
    if "normal" in out:  # averaged unit normals: re-normalise where the pixel is covered
        n = out["normal"]
        out["normal"] = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return small, out
