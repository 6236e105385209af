"""Decode, validate and normalise one product image (Pillow only; shared by acquire, vectorize and the service).

`model_pixels` is the one way an image becomes a model's input: the stages (through `runtime.preprocess`) and the
service's queries call it alike, so a file gets the same vector in the catalog and as a query. It decodes a JPEG
at the size the model needs (libjpeg's DCT scaling), since decoding every pixel of a phone's 12 MP photo costs
far more than the model's whole forward pass.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF (iPhone photos) when the maintained decoder is installed; requirements.txt installs it
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF = True
except ImportError:  # pragma: no cover - a bare install without it still reads every other format
    HEIF = False

MAX_PIXELS = 40_000_000
MIN_SIDE = 32
MAX_ASPECT = 20.0
MAX_SIDE = 1024
JPEG_QUALITY = 92
BACKGROUND = (255, 255, 255)
DCT_SCALES = (8, 4, 2)  # the reductions libjpeg decodes to directly, largest first
TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageRejected(ValueError):
    """An image that cannot be used, with a reason a person can act on.

    `kind` groups the reasons: empty, format (not an image), corrupt, pixels (too many), dimensions.
    """

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind


def open_image(data: bytes, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE,
               max_aspect: float = MAX_ASPECT, at_least: int | None = None) -> Image.Image:
    """Decode image bytes and return an upright RGB image (every pixel, unless `at_least` says otherwise).

    Transparent pixels are composited on white, CMYK/greyscale/16-bit/palette images become RGB,
    the EXIF orientation is applied, and animated images give their first frame.

    Args:
        data: the file's bytes.
        max_pixels: width x height above which the image is refused as a decompression bomb.
        min_side: the smallest usable width or height in pixels.
        max_aspect: the largest usable ratio of the longer to the shorter side.
        at_least: decode a JPEG at the largest DCT reduction (1/2, 1/4, 1/8) that leaves its longer side at least
            this many pixels, for a caller that shrinks it anyway (acquire stores 1,024 px from at least 1,536);
            None: decode every pixel.

    Returns:
        The decoded image in RGB mode.

    Raises:
        ImageRejected: the bytes are empty, not an image, truncated or corrupt, or of absurd size.
    """
    img = _checked(data, max_pixels, min_side, max_aspect)
    scale = next((s for s in DCT_SCALES if at_least and max(img.size) >= at_least * s), 1)
    if scale > 1:  # JPEG only; other formats ignore a draft
        img.draft(img.mode, (img.width // scale, img.height // scale))
    return _upright_rgb(_load(img))


@dataclass(frozen=True)
class ModelPixels:
    """An image made ready for a model, with what a caller reports about it.

    Attributes:
        pixels: RGB uint8 [size, size, 3].
        width: the upright photo's width in its own pixels (before any decoding scale).
        height: its height.
        box: the region used, [left, top, right, bottom] in the upright photo's own pixels.
        scale: the DCT reduction it was decoded at (1, 2, 4 or 8).
    """

    pixels: np.ndarray
    width: int
    height: int
    box: list[int]
    scale: int


def upright_size(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """The width and height of an image once its EXIF orientation is applied, read from its header only.

    Raises:
        ImageRejected: as `open_image`, for what the header shows (not for corrupt pixel data).
    """
    img = _checked(data, max_pixels, 1, float("inf"))
    return _upright_dims(img)


def box_pixels(box: Sequence[float], width: int, height: int) -> list[int]:
    """A box given as fractions (left, top, right, bottom) of a width x height image, in whole pixels."""
    left, top, right, bottom = box
    return [round(left * width), round(top * height), round(right * width), round(bottom * height)]


def model_pixels(data: bytes, size: int, box: Sequence[float] | None = None, max_pixels: int = MAX_PIXELS,
                 min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT,
                 max_decoded: int | None = None) -> ModelPixels:
    """Decode an image at the size a model needs and return its pixels resized to size x size.

    A JPEG is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg itself when the region used still has at least
    `size` pixels each way at that scale; other formats are decoded fully. Then, as `open_image` does, the EXIF
    orientation is applied and the mode becomes RGB; the box (if any) is cut; and the region is resized to
    size x size with Pillow's bilinear filter (antialiased when it shrinks).

    Args:
        data: the file's bytes.
        size: the side of the model's square input.
        box: an optional region as fractions (left, top, right, bottom) of the upright photo.
        max_pixels, min_side, max_aspect: as `open_image`.
        max_decoded: the most pixels to decode (after DCT scaling); None: no limit beyond `max_pixels`.

    Returns:
        The pixels, the upright photo's size and the region in its own pixels, and the scale decoded at.

    Raises:
        ImageRejected: as `open_image`; kind "dimensions" also for an empty box.
    """
    img = _checked(data, max_pixels, min_side, max_aspect)
    width, height = _upright_dims(img)
    region = box_pixels(box, width, height) if box is not None else [0, 0, width, height]
    shorter = min(region[2] - region[0], region[3] - region[1])
    if shorter < 1:
        raise ImageRejected(f"the box {region} covers no pixel of the {width}x{height} photo", "dimensions")
    scale = next((s for s in DCT_SCALES if shorter >= size * s), 1)
    if scale > 1:  # JPEG only; other formats ignore a draft and decode in full
        img.draft(img.mode, (img.width // scale, img.height // scale))
    if max_decoded is not None and img.width * img.height > max_decoded:
        raise ImageRejected(f"{width}x{height} would decode to {img.width * img.height:,} pixels, above this "
                            f"service's {max_decoded:,}: send a JPEG or a smaller photo", "pixels")
    img = _upright_rgb(_load(img))
    scale = round(width / img.width)
    if box is not None:
        img = img.crop(tuple(box_pixels(box, img.width, img.height)))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return ModelPixels(np.asarray(img, np.uint8), width, height, region, scale)


def _checked(data: bytes, max_pixels: int, min_side: int, max_aspect: float) -> Image.Image:
    """Open image bytes lazily (header only) and refuse what the header already shows to be unusable."""
    if not data:
        raise ImageRejected("empty file (0 bytes)", "empty")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check only warns below 2x its limit; ours is explicit and checked first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised file format)", "format") from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"decompression bomb refused: {exc}", "pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"truncated or corrupt image: {exc}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected(f"too many pixels ({width}x{height} > {max_pixels:,}): "
                            "possible decompression bomb; downscale the image", "pixels")
    if min(width, height) < min_side:
        raise ImageRejected(f"too small ({width}x{height}); the shorter side must be at least {min_side} px",
                            "dimensions")
    if max(width, height) / min(width, height) > max_aspect:
        raise ImageRejected(f"absurd aspect ratio ({width}x{height}); at most {max_aspect:g}:1 is accepted",
                            "dimensions")
    return img


def _load(img: Image.Image) -> Image.Image:
    """Decode the pixels of an opened image, turning a decoder's failure into ImageRejected."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"decompression bomb refused: {exc}", "pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"truncated or corrupt image: {exc}") from None
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 to 8) of an opened image; 1 when it has none or a broken one."""
    with contextlib.suppress(Exception):  # a broken EXIF block must not cost the image: keep it as stored
        value = int(img.getexif().get(0x0112, 1))
        return value if 1 <= value <= 8 else 1
    return 1


def _upright_dims(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    return (height, width) if _orientation(img) in TRANSPOSED else (width, height)


def _upright_rgb(img: Image.Image) -> Image.Image:
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
