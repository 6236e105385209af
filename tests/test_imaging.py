"""Image verification and normalisation: every bad-image kind is refused with a reason, odd ones are fixed."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from runtime import imaging


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def jpeg(size=(120, 80), colour=(200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", size, colour), "JPEG")


@pytest.mark.parametrize("data, kwargs, reason", [
    (b"", {}, "empty file"),
    (b"just some text, saved with a .jpg name\n", {}, "not an image"),
    (jpeg()[:300], {}, "truncated or corrupt"),
    (jpeg()[:-400] if len(jpeg()) > 800 else jpeg()[:200], {}, "truncated or corrupt"),
    (encode(Image.new("L", (400, 300)), "PNG"), {"max_pixels": 100_000}, "decompression bomb"),
    (jpeg((20, 20)), {}, "too small"),
    (jpeg((2000, 40)), {}, "absurd aspect ratio"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, {}, "not an image"),
], ids=["empty", "text", "truncated-header", "truncated-body", "bomb", "tiny", "aspect", "fake-png"])
def test_bad_images_are_refused_with_a_reason(data: bytes, kwargs: dict, reason: str) -> None:
    with pytest.raises(imaging.ImageRejected, match=reason):
        imaging.open_image(data, **kwargs)


def test_default_pixel_limit_refuses_a_real_bomb() -> None:
    # 8000 x 6000 = 48 Mpx of one colour compresses to a few kB: a classic decompression bomb.
    data = encode(Image.new("1", (8000, 6000)), "PNG")
    assert len(data) < 50_000
    with pytest.raises(imaging.ImageRejected, match="decompression bomb"):
        imaging.open_image(data)


def test_cmyk_becomes_rgb() -> None:
    img = imaging.open_image(encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"))
    assert img.mode == "RGB"
    r, g, b = img.getpixel((32, 32))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 1, 1, 0) is red


def test_alpha_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (16, 16, 48, 48))
    img = imaging.open_image(encode(rgba, "PNG"))
    assert img.mode == "RGB"
    assert img.getpixel((2, 2)) == (255, 255, 255)
    assert img.getpixel((32, 32)) == (0, 0, 255)


def test_palette_with_transparency_and_16_bit_grey() -> None:
    pal = Image.new("P", (64, 64), 0)
    pal.info["transparency"] = 0
    assert imaging.open_image(encode(pal, "PNG", transparency=0)).getpixel((5, 5)) == (255, 255, 255)
    grey16 = Image.new("I;16", (64, 64), 65535)
    assert imaging.open_image(encode(grey16, "PNG")).getpixel((5, 5))[0] >= 250


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (120, 60), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright = imaging.open_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert upright.size == (60, 120)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_other_formats_are_normalised_to_jpeg(fmt: str) -> None:
    img = imaging.open_image(encode(Image.new("RGB", (80, 60), (20, 40, 200)), fmt))
    out = imaging.normalise(img)
    assert out[:3] == b"\xff\xd8\xff"
    assert Image.open(io.BytesIO(out)).size == (80, 60)


def test_normalise_caps_the_longer_side() -> None:
    big = imaging.open_image(jpeg((3000, 1500)))
    small = Image.open(io.BytesIO(imaging.normalise(big, max_side=512)))
    assert small.size == (512, 256)
