"""Uploads: validation errors, MNIST-style preprocessing, and on-the-fly features that match
the stored ones of a tiny demo."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from explorer import upload as up
from explorer.mislabel import load_index_vectors
from trak_engine.errors import ConfigMismatchError

FLOAT32_RTOL = 1e-4
"""One example's gradient vs the same example inside a batch: float32 rounding only."""


@pytest.fixture(scope="module")
def attributor(tiny_demo):
    workdir, data = tiny_demo
    return up.UploadAttributor(workdir, data)


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **options) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def bar_image(height: int = 120, width: int = 60, dark_on_light: bool = True) -> np.ndarray:
    """(height, width) uint8: an off-centre 40x10 bar on a plain background."""
    image = np.zeros((height, width), dtype=np.uint8)
    image[20:60, 10:20] = 255
    return 255 - image if dark_on_light else image


def center_of_mass(image: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(image.shape)
    mass = image.astype(float) / image.sum()
    return float((ys * mass).sum()), float((xs * mass).sum())


# --- validation -------------------------------------------------------------------------


def test_validation_errors_name_what_is_wrong():
    png = encode(bar_image())
    with pytest.raises(up.UploadError, match=r"'a.png' \(image/png\) is empty \(0 bytes\)"):
        up.validate_upload(b"", "a.png", "image/png")
    with pytest.raises(up.UploadError, match=f"is {len(png):,} bytes; the limit is 10 bytes"):
        up.validate_upload(png, max_bytes=10)
    with pytest.raises(up.UploadError, match="'notes.png' is not an image PIL can read"):
        up.validate_upload(b"hello, world", "notes.png")
    with pytest.raises(up.UploadError, match="'a.gif' is a GIF image; only PNG and JPEG"):
        up.validate_upload(encode(bar_image(), "GIF"), "a.gif")
    with pytest.raises(up.UploadError, match="is 4x6 pixels; width and height must be between 8"):
        up.validate_upload(encode(np.zeros((6, 4), dtype=np.uint8)))
    with pytest.raises(up.UploadError, match="is 60x120 pixels; .* between 8 and 100"):
        up.validate_upload(png, max_side=100)
    with pytest.raises(up.UploadError, match="is a damaged or truncated PNG file"):
        up.validate_upload(png[: len(png) // 2], "cut.png")
    with pytest.raises(TypeError, match="content must be bytes; received str"):
        up.validate_upload("not bytes")  # type: ignore[arg-type]


def test_format_comes_from_the_bytes_and_exif_orientation_is_applied():
    image = up.validate_upload(encode(bar_image()), "photo.jpg", "image/jpeg")
    assert image.size == (60, 120)  # a PNG named .jpg is read as the PNG it is
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated = up.validate_upload(encode(bar_image(), "JPEG", exif=exif), "phone.jpg")
    assert rotated.size == (120, 60)


# --- preprocessing ----------------------------------------------------------------------


def test_dark_and_light_backgrounds_give_the_same_mnist_style_digit():
    light = up.preprocess_upload(encode(bar_image(dark_on_light=True)))
    dark = up.preprocess_upload(encode(bar_image(dark_on_light=False)))
    np.testing.assert_array_equal(light, dark)
    assert light.shape == (28, 28) and light.dtype == np.uint8
    assert light[0].max() == 0 and light.max() == 255
    assert (light.max(axis=1) > 0).sum() == 20  # the long side fills the 20-pixel box
    assert light.sum() / 255 / 20 == pytest.approx(5, abs=0.1)  # 20 x 5 of ink: aspect kept
    np.testing.assert_allclose(center_of_mass(light), (14, 14), atol=0.5)


def test_transparent_and_jpeg_uploads():
    ink = bar_image(dark_on_light=False)
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    rgba[..., 3] = ink  # black strokes on a transparent background
    expected = up.preprocess_upload(encode(bar_image()))
    np.testing.assert_array_equal(up.preprocess_upload(encode(Image.fromarray(rgba))), expected)
    jpeg = up.preprocess_upload(encode(bar_image(), "JPEG", quality=95))
    # JPEG noise may move the bounding box, and so the digit, by a pixel
    assert jpeg.sum() == pytest.approx(expected.sum(), rel=0.05)
    np.testing.assert_allclose(center_of_mass(jpeg), center_of_mass(expected), atol=1.0)
    sixteen = Image.fromarray(ink.astype(np.uint16) * 257)
    np.testing.assert_array_equal(up.preprocess_upload(encode(sixteen)), expected)


def test_blank_image_is_refused():
    with pytest.raises(up.UploadError, match="the image looks blank"):
        up.preprocess_upload(encode(np.full((40, 40), 200, dtype=np.uint8)))


# --- features and attribution -----------------------------------------------------------


def test_query_of_a_test_image_reproduces_its_stored_query(tiny_demo, attributor):
    _, data = tiny_demo
    for j in (0, 5, 19):
        query = attributor.query_vector(data.test_images[j], int(data.test_labels[j]))
        ref = data.queries[j]
        assert query.dtype == np.float32 and query.shape == ref.shape
        np.testing.assert_allclose(
            query, ref, rtol=FLOAT32_RTOL, atol=FLOAT32_RTOL * np.abs(ref).max()
        )


def test_attribute_defaults_to_the_predicted_class(tiny_demo, attributor):
    workdir, data = tiny_demo
    image = up.preprocess_upload(encode(255 - data.test_images[2]))
    result = attributor.attribute(image, k=4)
    probs = attributor.probabilities(image)
    assert result.label == int(probs.argmax()) and result.label_source == "predicted"
    np.testing.assert_allclose(probs.sum(), 1.0)
    scores = load_index_vectors(workdir) @ result.query  # (n_train,) brute force
    np.testing.assert_array_equal(result.helpful.ids[0], np.argsort(-scores, kind="stable")[:4])
    np.testing.assert_array_equal(result.harmful.ids[0], np.argsort(scores, kind="stable")[:4])
    chosen = attributor.attribute(image, k=4, label=(result.label + 1) % 10)
    assert chosen.label_source == "chosen" and not np.allclose(chosen.query, result.query)


def test_bad_label_is_refused(attributor):
    image = np.zeros((28, 28), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"label must be in \[0, 10\); received 10"):
        attributor.attribute(image, label=10)
    with pytest.raises(TypeError, match="label must be an int class id; received 1.5"):
        attributor.query_vector(image, 1.5)  # type: ignore[arg-type]


def test_checkpoints_other_than_the_featurized_ones_are_refused(tiny_demo, tmp_path):
    workdir, _ = tiny_demo
    copy = shutil.copytree(workdir, tmp_path / "copy")
    saved = torch.load(copy / "checkpoints" / "ckpt_000.pt", weights_only=True)
    torch.save(saved, copy / "checkpoints" / "ckpt_001.pt")
    with pytest.raises(ConfigMismatchError, match="checkpoint 1 weights are not those featurized"):
        up.UploadAttributor(copy)
