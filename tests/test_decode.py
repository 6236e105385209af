"""One decode for the catalog and the queries (`runtime.imaging.model_pixels`): a file gives the same model input,
and so the same vector, through vectorize's tf.data path and through the service; a phone-sized JPEG is decoded
at the scale the model needs, upright, with crop boxes still cutting the right region."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime import imaging
from runtime.preprocess import decode_image, prepare_array
from service.config import load_config
from service.uploads import decode

PHONE = (3024, 4032)  # a 12 MP phone photo, portrait
ORIENTATION = 0x0112


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth random texture, a red left third and a blue square low on the right."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 216, (24, 18, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.BICUBIC)
    width, height = size
    img.paste((220, 20, 20), (0, 0, width // 3, height))
    img.paste((20, 20, 220), (width * 3 // 5, height * 3 // 5, width * 9 // 10, height * 9 // 10))
    return img


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def rotated_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG stored as a camera would: pixels as the sensor saw them, and the EXIF tag that turns them upright."""
    stored = {6: upright.transpose(Image.Transpose.ROTATE_90), 8: upright.transpose(Image.Transpose.ROTATE_270),
              3: upright.transpose(Image.Transpose.ROTATE_180)}[orientation]
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=90, exif=exif.tobytes())


def reference(data: bytes, size: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """What decoding every pixel gives: the full image, upright, cut and resized with the same filter."""
    img = imaging.open_image(data)
    if box is not None:
        img = img.crop(tuple(imaging.box_pixels(box, *img.size)))
    return prepare_array(np.asarray(img), size)


FORMATS = {
    "phone JPEG": lambda: encode(photo(PHONE), "JPEG", quality=90),
    "phone JPEG, EXIF 6": lambda: rotated_jpeg(photo(PHONE), 6),
    "landscape JPEG, EXIF 8": lambda: rotated_jpeg(photo((1600, 1200)), 8),
    "catalog JPEG": lambda: encode(photo((768, 1024)), "JPEG", quality=92),
    "small JPEG": lambda: encode(photo((180, 240)), "JPEG", quality=92),
    "PNG": lambda: encode(photo((900, 1200)), "PNG"),
    "WebP": lambda: encode(photo((900, 1200)), "WEBP", quality=90),
}
if imaging.HEIF:
    FORMATS["HEIC"] = lambda: encode(photo((1512, 2016)), "HEIF", quality=90)


@pytest.mark.parametrize("name", list(FORMATS))
def test_the_pipeline_and_the_service_make_the_same_pixels(name: str, tmp_path: Path) -> None:
    data = FORMATS[name]()
    path = tmp_path / "photo"
    path.write_bytes(data)
    config = load_config({})
    for size in (224, 448):  # one view, and the six-view encoders' input
        in_catalog = decode_image(str(path), size).numpy()
        in_query = decode(data, config, size).pixels
        assert in_catalog.shape == (size, size, 3) and in_catalog.dtype == np.uint8
        assert np.array_equal(in_catalog, in_query), name
        # decoded at a reduced scale or not, it is the same picture as decoding every pixel gives
        assert np.abs(in_query.astype(float) - reference(data, size)).mean() < 2.5, name
        # upright: the red third is on the left, the blue square low on the right
        assert in_query[size // 2, size // 8, 0] > 180 and in_query[size // 2, size // 8, 2] < 60, name
        assert in_query[size * 3 // 4, size * 3 // 4, 2] > 180, name


def test_a_phone_photo_is_decoded_at_an_eighth_and_its_size_reported_upright() -> None:
    prepared = imaging.model_pixels(rotated_jpeg(photo(PHONE), 6), 224)
    assert prepared.scale == 8 and (prepared.width, prepared.height) == PHONE
    assert prepared.box == [0, 0, *PHONE]
    # a region needs its own resolution: a box a quarter of the width wide is decoded at a lower reduction
    boxed = imaging.model_pixels(rotated_jpeg(photo(PHONE), 6), 224, box=(0.5, 0.5, 0.75, 0.75))
    assert boxed.scale == 2 and boxed.box == [1512, 2016, 2268, 3024]
    assert imaging.model_pixels(encode(photo((600, 800)), "JPEG"), 224).scale == 2
    assert imaging.model_pixels(encode(photo((600, 800)), "PNG"), 224).scale == 1  # only JPEGs scale in decoding


@pytest.mark.parametrize("orientation", [None, 6, 8, 3])
def test_a_box_cuts_the_same_region_of_the_upright_photo_at_any_scale(orientation: int | None) -> None:
    upright = photo(PHONE, seed=3)
    data = encode(upright, "JPEG", quality=90) if orientation is None else rotated_jpeg(upright, orientation)
    box = (0.6, 0.6, 0.9, 0.9)  # exactly the blue square
    prepared = decode(data, load_config({}), 224, box)
    assert prepared.box == imaging.box_pixels(box, *PHONE)
    assert prepared.pixels[..., 2].mean() > 200 and prepared.pixels[..., 0].mean() < 40
    assert np.abs(prepared.pixels.astype(float) - reference(data, 224, box)).mean() < 2.5


def test_a_catalog_file_gets_its_stored_vector_back_as_a_query(built: Path) -> None:
    """Vectorize's own batches (tf.data over files) and the service's decode feed one extractor the same pixels."""
    from pipeline.catalog.table import read_catalog
    from pipeline.features.compute import image_batches
    from runtime.extractor import load_extractor
    from runtime.layout import Layout

    layout = Layout(built)
    extractor = load_extractor(layout.extractor)
    paths = [str(layout.catalog / p) for p in read_catalog(layout.catalog_csv)["image"][:6]]
    batched = np.concatenate([images.numpy() for _, images in image_batches(paths, 4, extractor.input_size)])
    queried = np.stack([decode(Path(p).read_bytes(), load_config({}), extractor.input_size).pixels for p in paths])
    assert np.array_equal(batched, queried)
    assert np.allclose(extractor.embed(batched), extractor.embed(queried), atol=1e-6)
