"""Decode, validate and normalise one product image (Pillow only; shared by acquire and the service)."""

from __future__ import annotations

import contextlib
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000
MIN_SIDE = 32
MAX_ASPECT = 20.0
MAX_SIDE = 1024
JPEG_QUALITY = 92
BACKGROUND = (255, 255, 255)


class ImageRejected(ValueError):
    """An image that cannot be used, with a reason a person can act on.

    `kind` groups the reasons: empty, format (not an image), corrupt, pixels (too many), dimensions.
    """

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind


def open_image(data: bytes, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE,
               max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Decode image bytes fully and return an upright RGB image.

    Transparent pixels are composited on white, CMYK/greyscale/16-bit/palette images become RGB,
    the EXIF orientation is applied, and animated images give their first frame.

    Args:
        data: the file's bytes.
        max_pixels: width x height above which the image is refused as a decompression bomb.
        min_side: the smallest usable width or height in pixels.
        max_aspect: the largest usable ratio of the longer to the shorter side.

    Returns:
        The decoded image in RGB mode.

    Raises:
        ImageRejected: the bytes are empty, not an image, truncated or corrupt, or of absurd size.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)", "empty")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check only warns below 2x its limit; ours is explicit and checked first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRejected(f"too many pixels ({width}x{height} > {max_pixels:,}): "
                                    "possible decompression bomb; downscale the image", "pixels")
            img.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised file format)", "format") from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"decompression bomb refused: {exc}", "pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"truncated or corrupt image: {exc}") from None
    if min(width, height) < min_side:
        raise ImageRejected(f"too small ({width}x{height}); the shorter side must be at least {min_side} px",
                            "dimensions")
    if max(width, height) / min(width, height) > max_aspect:
        raise ImageRejected(f"absurd aspect ratio ({width}x{height}); at most {max_aspect:g}:1 is accepted",
                            "dimensions")
    with contextlib.suppress(Exception):  # a broken EXIF block must not cost the image: keep it as stored
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on a white background."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white.
        return img.point(lambda v: v / 256).convert("L").convert("RGB")
    return img.convert("RGB")


def normalise(img: Image.Image, max_side: int = MAX_SIDE) -> bytes:
    """Return the image as RGB JPEG bytes, downscaled so that its longer side is at most `max_side`."""
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
