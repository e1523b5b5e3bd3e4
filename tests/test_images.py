"""Image files: 16-bit PNG precision, readers' one-line errors."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from zerolevel.errors import InputError
from zerolevel.images import read_image, read_mask, read_normal_map, write_normal_png, write_png

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("shape", [(13, 17), (13, 17, 3)])
def test_png16_round_trip_keeps_all_bits(tmp_path, shape):
    image = np.random.default_rng(1).integers(0, 65536, shape, dtype=np.uint16)
    write_png(tmp_path / "x.png", image)
    assert iio.imread(tmp_path / "x.png").shape[:2] == shape[:2]  # a standard PNG others can read
    back = read_image(tmp_path / "x.png")
    np.testing.assert_allclose(back, image / 65535.0, atol=1e-7)


def test_normal_png_precision(tmp_path):
    rng = np.random.default_rng(2)
    n = rng.normal(size=(20, 30, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    write_normal_png(tmp_path / "n.png", n)
    back = read_normal_map(tmp_path / "n.png")
    assert np.abs(back - n).max() < 2e-5  # 16 bits, not 8


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    for reader in (read_mask, read_image, read_normal_map):
        with pytest.raises(InputError, match="bad.png"):
            reader(bad)
        with pytest.raises(InputError, match="missing.png"):
            reader(tmp_path / "missing.png")


def test_png16_external_rgb_file():
    """DiLiGenT's 16-bit RGB normal map (external encoder, adaptive filters): Pillow reads only the
    high bytes; ours must agree with them and give unit normals inside the mask."""
    path = DATA / "diligent_single_view" / "bear" / "normal_map.png"
    if not path.is_file():
        pytest.skip("shared DiLiGenT data not present")
    import imagecodecs

    ours = imagecodecs.png_decode(path.read_bytes())
    assert ours.dtype == np.uint16 and ours.shape == (512, 612, 3)
    np.testing.assert_array_equal(ours >> 8, iio.imread(path))
    mask = iio.imread(path.parent / "mask.png") > 127
    n = read_normal_map(path)
    length = np.linalg.norm(n, axis=-1)[mask if mask.ndim == 2 else mask[..., 0]]
    assert np.median(np.abs(length - 1)) < 1e-3


