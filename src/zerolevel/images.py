"""Image files of a scene: masks, images, depth and normal maps (16-bit PNG, float .npy, float .exr).

Every reader returns a numpy array or raises `InputError` naming the file and the problem (missing,
corrupt, wrong shape, NaN). PNGs are coded with libpng through `imagecodecs`, which keeps 16 bits
per channel (Pillow reads 16-bit RGB PNGs as 8-bit and cannot write them).
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import imageio.v3 as iio
import numpy as np

from .errors import InputError

BACKGROUND_LENGTH = 0.05  # decoded normals shorter than this are background
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W) or (H, W, C) uint8 / uint16 array as a PNG, keeping its bit depth."""
    Path(path).write_bytes(imagecodecs.png_encode(np.ascontiguousarray(image)))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write an (H, W) bool mask as 8-bit PNG, foreground 255."""
    write_png(path, np.where(mask, 255, 0).astype(np.uint8))


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W) or (H, W, 3) float image in [0, 1] as 8-bit PNG."""
    write_png(path, np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))


def write_normal_png(path: str | Path, normal: np.ndarray) -> None:
    """Write (H, W, 3) unit normals as a 16-bit RGB PNG, rgb = (n + 1) / 2; zero vectors -> (0, 0, 0)."""
    normal = np.asarray(normal, dtype=np.float64)
    rgb = np.round((np.clip(normal, -1, 1) + 1) / 2 * 65535).astype(np.uint16)
    rgb[np.linalg.norm(normal, axis=-1) < BACKGROUND_LENGTH] = 0
    write_png(path, rgb)


def write_exr(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W, 3) float array as a float32 OpenEXR file with channels R, G, B."""
    import OpenEXR  # imported here: only NeuS-layout exports write EXR

    image = np.asarray(image, dtype=np.float32)
    channels = {c: np.ascontiguousarray(image[..., i]) for i, c in enumerate("RGB")}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, channels) as exr:
        exr.write(str(path))


# ====================================================================== reading files
def read_mask(path: str | Path) -> np.ndarray:
    """(H, W) bool foreground from a mask image: grey, grey+alpha (grey used), RGB(A) (max of RGB);
    foreground where the value exceeds half the range (> 127 for 8-bit)."""
    raw = _read_raster(path)
    value = raw if raw.ndim == 2 else (raw[..., 0] if raw.shape[-1] <= 2 else raw[..., :3].max(-1))
    if value.dtype == bool:
        return value
    top = 65535 if value.dtype == np.uint16 else 255
    return value > top // 2


def read_image(path: str | Path) -> np.ndarray:
    """(H, W) or (H, W, 3) float32 in [0, 1] from an 8- or 16-bit image (alpha dropped)."""
    raw = _read_raster(path)
    if raw.ndim == 3:
        raw = raw[..., 0] if raw.shape[-1] <= 2 else raw[..., :3]
    if raw.dtype == bool:
        return raw.astype(np.float32)
    top = 65535.0 if raw.dtype == np.uint16 else 255.0
    return (raw.astype(np.float32) / top).astype(np.float32)


def read_rgba(path: str | Path, mask_path: str | Path | None = None) -> np.ndarray:
    """(H, W, 4) uint8 straight (not premultiplied) RGBA from an image file, alpha = the silhouette.

    RGBA and grey+alpha images keep their alpha; with `mask_path` (a mask file read by `read_mask`,
    foreground -> 255) the mask is the alpha instead. Grey is repeated into RGB; 16-bit channels are
    scaled to 8 bits.

    Raises:
        InputError: a missing or corrupt file, an image without alpha and no mask, a mask of another size.
    """
    raw = _read_raster(path)
    if raw.dtype == bool:
        raw = raw.astype(np.uint8) * 255
    elif raw.dtype == np.uint16:
        raw = np.round(raw / 257.0).astype(np.uint8)
    if raw.ndim == 2:
        raw = raw[..., None]
    channels = raw.shape[-1]
    rgb = np.repeat(raw[..., :1], 3, axis=-1) if channels <= 2 else raw[..., :3]
    alpha = raw[..., -1] if channels in (2, 4) else None
    if mask_path is not None:
        mask = read_mask(mask_path)
        if mask.shape != rgb.shape[:2]:
            raise InputError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image {path} is "
                             f"{rgb.shape[1]}x{rgb.shape[0]}", mask_path)
        alpha = np.where(mask, 255, 0).astype(np.uint8)
    if alpha is None:
        raise InputError("the image has no alpha channel (the silhouette): use an RGBA image or give a mask (--mask)",
                         path)
    return np.ascontiguousarray(np.concatenate([rgb, alpha[..., None]], axis=-1))


def read_depth(path: str | Path) -> np.ndarray:
    """(H, W) float32 camera-z depth from a .npy file (0 = no surface)."""
    depth = _read_npy(path)
    if depth.ndim != 2:
        raise InputError(f"depth must be an (H, W) array, got shape {depth.shape}", path)
    if not np.all(np.isfinite(depth)):
        raise InputError("depth has NaN or infinite values", path)
    if (depth < 0).any():
        raise InputError("depth has negative values (0 marks no surface)", path)
    return depth.astype(np.float32)


def read_normal_map(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 decoded (not yet validated) normals from .png (8/16-bit, rgb = (n + 1) / 2;
    all-zero pixels decode to 0), .npy (float) or .exr (float, channels R, G, B)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        normal = _read_npy(path)
    elif suffix == ".exr":
        normal = read_exr(path)
    else:
        raw = _read_raster(path)
        if raw.ndim != 3 or raw.shape[-1] < 3 or raw.dtype == bool:
            raise InputError(f"normal map must be an RGB image, got shape {raw.shape}", path)
        raw = raw[..., :3]
        top = 65535.0 if raw.dtype == np.uint16 else 255.0
        normal = raw.astype(np.float32) / top * 2 - 1
        normal[(raw == 0).all(-1)] = 0
    if normal.ndim != 3 or normal.shape[-1] != 3:
        raise InputError(f"normal map must be (H, W, 3), got shape {normal.shape}", path)
    if not np.all(np.isfinite(normal)):
        raise InputError("normal map has NaN or infinite values", path)
    return normal.astype(np.float32)


def read_exr(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 from the R, G, B channels of an OpenEXR file."""
    import OpenEXR  # imported here: only normal maps in EXR need it

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        channels = OpenEXR.File(str(path), separate_channels=True).channels()
    except Exception as exc:  # the binding raises plain Exceptions for corrupt files
        raise InputError(f"cannot read EXR ({type(exc).__name__}: {exc})", path) from None
    if not all(c in channels for c in "RGB"):
        raise InputError(f"EXR has no R, G, B channels (found {sorted(channels)})", path)
    return np.stack([np.asarray(channels[c].pixels, dtype=np.float32) for c in "RGB"], axis=-1)


def _read_npy(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/UnpicklingError
        raise InputError(f"cannot read .npy ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise InputError("not a numeric .npy array", path)
    return array


def _read_raster(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W) or (H, W, C) uint8/uint16/bool, keeping 16-bit PNG precision.

    PNGs go through libpng (imagecodecs) so that 16-bit RGB keeps its precision.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    data = path.read_bytes()
    try:
        if data[:8] == _PNG_SIGNATURE:
            image = imagecodecs.png_decode(data)
        else:
            image = iio.imread(data, plugin="pillow")
    except Exception as exc:  # the decoders raise many types for corrupt files
        raise InputError(f"cannot decode image: corrupt or not an image file ({type(exc).__name__})",
                         path) from None
    if image.ndim not in (2, 3) or image.size == 0:
        raise InputError(f"not a single 2D image (shape {image.shape})", path)
    if image.dtype not in (np.uint8, np.uint16, bool):
        image = image.astype(np.uint16) if image.dtype.itemsize > 1 else image.astype(np.uint8)
    return image

