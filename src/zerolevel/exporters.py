"""Exporters: a zerolevel scene written in another multi-view layout, the inverse of `importers`.

`export_neus` writes the NeuS / IDR layout SuperNormal reads (`cameras_sphere.npz`, world-space EXR
normals, masks, images), so that scenes rendered here can be fitted by other tools, and so that
benchmarks can fit what a user's NeuS folder would hold (`benchmarks/fit_speed.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_dir
from .images import write_exr, write_image, write_mask
from .scene import Scene, transform_normals


def export_neus(scene: Scene, path: str | Path, overwrite: bool = True) -> None:
    """Write `scene` as a NeuS folder at `path`, atomically (whole or not at all).

    The world frame is the scene's input units (`to_world`), so `scale_mat_i` = `to_world` and
    `world_mat_i` = K' [R|t] A^-1, A = to_world, K' = K with the principal point moved half a pixel
    (NeuS puts pixel centres at integer coordinates, zerolevel at + 0.5). Normals go to world space
    (n_world ~ A^-T n_work) as `normal_world_space_GT/NNN.exr`; masks as `mask/NNN.png`; images as
    `image/NNN.png`; files are named by view index. `importers.import_neus` reads it back.
    """
    A = np.asarray(scene.to_world, dtype=np.float64)
    from_world = np.linalg.inv(A)
    normals_to_world = np.linalg.inv(A[:3, :3])
    modalities = scene.modalities()
    arrays: dict[str, np.ndarray] = {}
    with atomic_dir(path, overwrite=overwrite) as tmp:
        folders = {"normal": tmp / "normal_world_space_GT", "mask": tmp / "mask", "image": tmp / "image"}
        for modality, folder in folders.items():
            if modality in modalities:
                folder.mkdir()
        for i, view in enumerate(scene.views):
            K = np.eye(4)
            K[:3, :3] = view.K
            K[0, 2] -= 0.5
            K[1, 2] -= 0.5
            arrays[f"world_mat_{i}"] = K @ np.asarray(view.world_to_camera, dtype=np.float64) @ from_world
            arrays[f"scale_mat_{i}"] = A
            stem = f"{i:03d}"
            if "normal" in modalities:
                write_exr(folders["normal"] / f"{stem}.exr", transform_normals(view.normal, normals_to_world))
            if "mask" in modalities:
                write_mask(folders["mask"] / f"{stem}.png", view.mask > 0.5)
            if "image" in modalities:
                write_image(folders["image"] / f"{stem}.png", view.image)
        np.savez(tmp / "cameras_sphere.npz", **arrays)

