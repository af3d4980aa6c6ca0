"""Bring your own image: validate an upload, make it an MNIST-style digit, attribute it.

An uploaded image has no true label, so its margin is taken for a chosen label, by default the
class the ensemble of checkpoints predicts: the attributions then answer "which training
examples made the model call this image a c?". Choosing another label asks the same about that
label.

``UploadAttributor`` is built once per server (it holds the checkpoints and the projection
matrices, about grad_dim * k * 4 bytes each: 236 MB per checkpoint for the demo CNN at
k = 2048), so a query costs one per-example gradient and one projection per checkpoint, then
two index searches.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from explorer.artifacts import ExplorerData, load_explorer_data
from explorer.datasets import IMAGE_SIDE, to_tensor
from explorer.demo import load_checkpoints, load_demo_config
from explorer.training import init_model
from trak_engine.api import make_projector, project_examples
from trak_engine.errors import ConfigMismatchError
from trak_engine.fingerprints import checkpoint_fingerprint
from trak_engine.index import TopK
from trak_engine.projection import DEFAULT_MAX_BYTES
from trak_engine.store import FeatureStore

logger = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MIN_SIDE = 8
MAX_SIDE = 4096
FORMATS = ("PNG", "JPEG")
DIGIT_BOX = 20
"""MNIST digits fit a 20x20 box, centred by centre of mass in the 28x28 image."""
INK_FRACTION = 0.25
"""Pixels above this fraction of the brightest ink define the digit's bounding box."""
NOISE_FRACTION = 0.1
"""Pixels below this fraction of the brightest ink are set to background."""
MIN_CONTRAST = 32
"""Below this ink-to-background difference (0-255) the image is taken as blank."""


class UploadError(ValueError):
    """An uploaded file is not an image the app can use; the message says why."""


def validate_upload(
    content: bytes,
    name: str = "upload",
    declared_type: str | None = None,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
) -> Image.Image:
    """Decode an uploaded file after checking its size, format (from its bytes) and dimensions.

    The format is what PIL reads from the file's signature; the name and the declared MIME
    type only appear in messages (a PNG called photo.jpg is accepted as a PNG).

    Args:
        content: the file's bytes.
        name, declared_type: what the browser reported, for messages.
        max_bytes: size limit; min_side, max_side: limits on width and height in pixels.

    Returns:
        The decoded image, EXIF orientation applied.

    Raises:
        UploadError: empty, too large, not PNG/JPEG, corrupt, or dimensions out of range.
    """
    what = f"{name!r}" + (f" ({declared_type})" if declared_type else "")
    if not isinstance(content, (bytes, bytearray)):
        raise TypeError(f"content must be bytes; received {type(content).__name__}")
    if len(content) == 0:
        raise UploadError(f"{what} is empty (0 bytes)")
    if len(content) > max_bytes:
        raise UploadError(
            f"{what} is {len(content):,} bytes; the limit is {max_bytes:,} bytes "
            f"({max_bytes / 2**20:.1f} MB)"
        )
    try:
        image = Image.open(io.BytesIO(content))
    except Image.DecompressionBombError as err:
        raise UploadError(
            f"{what} has too many pixels; width and height must be between {min_side} and "
            f"{max_side}"
        ) from err
    except (UnidentifiedImageError, OSError) as err:
        raise UploadError(f"{what} is not an image PIL can read; upload a PNG or JPEG") from err
    if image.format not in FORMATS:
        raise UploadError(f"{what} is a {image.format} image; only PNG and JPEG are accepted")
    width, height = image.size
    if not (min_side <= width <= max_side and min_side <= height <= max_side):
        raise UploadError(
            f"{what} is {width}x{height} pixels; width and height must be between {min_side} "
            f"and {max_side}"
        )
    try:
        image.load()
    except (OSError, ValueError) as err:
        raise UploadError(f"{what} is a damaged or truncated {image.format} file: {err}") from err
    return ImageOps.exif_transpose(image)


def to_gray(image: Image.Image) -> np.ndarray:
    """(H, W) float32 0-255 luminance; transparent areas are composited onto white.

    16-bit grayscale (PIL modes ``I;16*`` and ``I``) is scaled from 0-65535 to 0-255.
    """
    if image.mode.startswith("I"):
        return np.clip(np.asarray(image, dtype=np.float32) * (255.0 / 65535.0), 0.0, 255.0)
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32)


def ink_image(gray: np.ndarray) -> np.ndarray:
    """Light-on-dark ink scaled to a 255 maximum, background 0: (H, W) float32.

    The background level is the median of the border pixels; a light background is inverted,
    so a dark digit on white paper becomes MNIST's white digit on black.

    Raises:
        UploadError: the image is (almost) uniform, so there is no digit to find.
    """
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    if background > 127.5:
        gray, background = 255.0 - gray, 255.0 - background
    ink = np.clip(gray - background, 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise UploadError(
            f"the image looks blank: its brightest stroke differs from the background by "
            f"{peak:.0f} of 255 (at least {MIN_CONTRAST} needed)"
        )
    ink = ink * (255.0 / peak)
    ink[ink < NOISE_FRACTION * 255.0] = 0.0
    return ink


def center_digit(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit it in a 20x20 box (aspect kept), centre by mass in 28x28.

    Args:
        ink: (H, W) float32, light ink on a 0 background (``ink_image``).

    Returns:
        (28, 28) uint8.
    """
    rows, cols = np.nonzero(ink > INK_FRACTION * 255.0)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = max(crop.shape)
    square = np.zeros((side, side), dtype=np.float32)  # pad the short side: aspect kept
    top, left = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    box = Image.fromarray(square).resize((DIGIT_BOX, DIGIT_BOX), Image.Resampling.BILINEAR)
    digit = np.clip(np.asarray(box), 0.0, 255.0)  # (20, 20)
    total = digit.sum()
    ys, xs = np.indices(digit.shape)
    # Place the box so that its centre of mass lands on the image centre, box kept inside.
    margin = IMAGE_SIDE - DIGIT_BOX
    dy = int(np.clip(round(IMAGE_SIDE / 2 - (ys * digit).sum() / total), 0, margin))
    dx = int(np.clip(round(IMAGE_SIDE / 2 - (xs * digit).sum() / total), 0, margin))
    out = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    out[dy : dy + DIGIT_BOX, dx : dx + DIGIT_BOX] = digit
    return np.round(out).astype(np.uint8)


def preprocess_image(image: Image.Image) -> np.ndarray:
    """An arbitrary image as an MNIST-style (28, 28) uint8 digit, white on black.

    Grayscale, inverted if the background is light, cropped to the digit, scaled to fit 20x20
    with its aspect ratio kept, centred by centre of mass. Feed the result to ``to_tensor``.

    Raises:
        UploadError: the image is blank.
    """
    return center_digit(ink_image(to_gray(image)))


def preprocess_upload(
    content: bytes, name: str = "upload", declared_type: str | None = None
) -> np.ndarray:
    """``validate_upload`` then ``preprocess_image``: (28, 28) uint8."""
    return preprocess_image(validate_upload(content, name, declared_type))


@dataclass(frozen=True)
class UploadResult:
    """Attributions of one uploaded image.

    Attributes:
        image: (28, 28) uint8, what the models saw.
        probs: (n_classes,) float64 ensemble probabilities.
        label: the class whose margin was attributed; ``label_source`` is ``"predicted"``
            (the ensemble's class, the default) or ``"chosen"``.
        helpful, harmful: TopK with (1, k) ids and scores.
        query: (dim,) float32 query vector.
        seconds: time from image to results.
    """

    image: np.ndarray
    probs: np.ndarray
    label: int
    label_source: str
    helpful: TopK
    harmful: TopK
    query: np.ndarray
    seconds: float


class UploadAttributor:
    """Per-checkpoint models and projectors of a demo workdir, ready to attribute new images.

    Build once per server and share: queries are serialized by a lock (``functional_call``
    swaps a module's parameters while it runs, so one model must not be used by two threads).

    Args:
        workdir: a demo artifact directory (demo-config.json, checkpoints/, features/).
        data: its loaded artifacts (loaded here if None); their index is searched.
        max_proj_bytes: memory budget per projection matrix; below grad_dim * k * 4 bytes the
            matrix is regenerated for every query (same values, much slower).

    Raises:
        ConfigMismatchError: the checkpoints, projector or index differ from those the stored
            features were made with.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        data: ExplorerData | None = None,
        max_proj_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        start = time.perf_counter()
        self.config = load_demo_config(workdir)
        self.data = data if data is not None else load_explorer_data(workdir)
        self.trak = self.config.trak_config()
        states = load_checkpoints(workdir, self.config)
        self.models = []
        for state in states:
            model = init_model(self.config.model, 0)
            model.load_state_dict(state)
            self.models.append(model.eval())
        device = torch.device("cpu")
        self.projectors = [
            make_projector(model, self.trak, m, device, max_proj_bytes)
            for m, model in enumerate(self.models)
        ]
        self._check_store(Path(workdir) / "features", states)
        self._lock = threading.Lock()
        self.setup_seconds = time.perf_counter() - start

    def _check_store(self, store_dir: Path, states: list[dict[str, torch.Tensor]]) -> None:
        """Refuse checkpoints, projector or index that differ from the stored features'."""
        meta = FeatureStore.open(store_dir).meta
        diffs = []
        fields, backend = self.trak.feature_fields(), self.projectors[0].backend
        if meta["config"] != fields:
            diffs.append(f"feature config: stored {meta['config']}, now {fields}")
        if meta["projector"] != backend:
            diffs.append(f"projector: stored {meta['projector']}, now {backend}")
        stored = meta["checkpoints"]
        for m, state in enumerate(states):
            if m >= len(stored) or stored[m] != checkpoint_fingerprint(state):
                diffs.append(f"checkpoint {m} weights are not those featurized")
        if self.data.index.dim != len(states) * self.trak.proj_dim:
            diffs.append(
                f"index dimension {self.data.index.dim} != {len(states)} checkpoints x "
                f"k = {self.trak.proj_dim}"
            )
        if diffs:
            raise ConfigMismatchError(
                f"cannot attribute new images against {store_dir}: "
                + "; ".join(diffs)
                + ". Rebuild the demo artifacts."
            )

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Ensemble (mean softmax) probabilities (n_classes,) float64 of a (28, 28) uint8 image."""
        x = to_tensor(np.asarray(image)[None])  # (1, 1, 28, 28)
        with self._lock, torch.no_grad():
            probs = [torch.softmax(m(x).double(), dim=1)[0].numpy() for m in self.models]
        return np.mean(probs, axis=0)  # (M, n_classes) -> (n_classes,)

    def query_vector(self, image: np.ndarray, label: int) -> np.ndarray:
        """The index query of a (28, 28) uint8 image for ``label``: (M * k,) float32.

        The same path as the stored test features: per checkpoint the margin gradient for
        ``label``, projected with that checkpoint's seeded projector, concatenated.
        """
        n_classes = len(self.data.class_names)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise TypeError(f"label must be an int class id; received {label!r}")
        if not 0 <= label < n_classes:
            raise ValueError(f"label must be in [0, {n_classes}); received {label}")
        x = to_tensor(np.asarray(image)[None])  # (1, 1, 28, 28)
        y = torch.tensor([int(label)])
        parts = []
        with self._lock:
            for model, projector in zip(self.models, self.projectors, strict=True):
                projected, _ = project_examples(model, projector, x, y, self.trak.param_names)
                parts.append(projected[0].detach().numpy())  # (k,)
        return np.concatenate(parts).astype(np.float32)  # (M * k,)

    def attribute(self, image: np.ndarray, k: int = 10, label: int | None = None) -> UploadResult:
        """Helpful and harmful training examples for a preprocessed (28, 28) uint8 image.

        Args:
            image: from ``preprocess_image`` / ``preprocess_upload``.
            k: how many of each (capped at n_train).
            label: the class to attribute; None for the ensemble's predicted class.
        """
        start = time.perf_counter()
        probs = self.probabilities(image)
        source = "predicted" if label is None else "chosen"
        label = int(probs.argmax()) if label is None else label
        query = self.query_vector(image, label)
        return UploadResult(
            image=np.asarray(image, dtype=np.uint8),
            probs=probs,
            label=int(label),
            label_source=source,
            helpful=self.data.index.helpful(query, k),
            harmful=self.data.index.harmful(query, k),
            query=query,
            seconds=time.perf_counter() - start,
        )
