import numpy as np
import pytest
from PIL import Image

from oneseg.data.image_io import ImageReadError, image_size, read_image, read_label
from oneseg.data.intensity import Intensity


def _gradient(height=20, width=30):
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 8, ys * 12, (xs + ys) * 4], -1).astype(np.uint8)


def test_rgb_png_unchanged(tmp_path):
    rgb = _gradient()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_jpeg_becomes_rgb(tmp_path):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (12, 1))
    Image.fromarray(gray, mode="L").save(tmp_path / "g.jpg", quality=100)
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (12, 25, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.abs(out[..., 0].astype(int) - gray).max() <= 3


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.dstack([_gradient(), np.full((20, 30), 40, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), _gradient())


def test_palette_png_gives_palette_colours(tmp_path):
    index = np.zeros((6, 8), np.uint8)
    index[:, 4:] = 1
    image = Image.fromarray(index, mode="P")
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 7]) == (200, 100, 50)
    # read as a label, the same file gives its indices
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), index)


def test_16bit_png_scaled_to_8bit_by_its_type_range(tmp_path):
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png", Intensity(mode="full_range"))
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]
    assert read_label(tmp_path / "d.png").max() == 65535


def test_exif_orientation_applied(tmp_path):
    upright = _gradient(20, 30)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # 30 x 20 stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    stored.save(tmp_path / "r.png", exif=exif)
    assert image_size(tmp_path / "r.png") == (20, 30)
    np.testing.assert_array_equal(read_image(tmp_path / "r.png"), upright)


def test_missing_truncated_and_garbage_files_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="nope.jpg: file not found"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="junk.jpg"):
        read_image(tmp_path / "junk.jpg")
    Image.fromarray(_gradient(64, 64)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg.*truncated"):
        read_image(tmp_path / "cut.jpg")
