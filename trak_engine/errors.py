"""Exceptions raised by the engine. Each message says what was expected and what was found."""


class TrakError(Exception):
    """Base class for the engine's own errors."""


class ConfigMismatchError(TrakError, ValueError):
    """Stored artifacts were made with another config, model or dataset."""


class NonFiniteError(TrakError, ValueError):
    """An input, gradient or model output is NaN or infinite; the message names the example."""


class IllConditionedKernelError(TrakError, ValueError):
    """The kernel Phi^T Phi + lambda I cannot be inverted reliably."""


class MissingCheckpointError(TrakError, ValueError):
    """Scoring asked for checkpoints whose features were never computed."""


class DuplicateCheckpointError(TrakError, ValueError):
    """Two checkpoints are the same object or hold the same weights."""


class EmptyTrainingSetError(TrakError, ValueError):
    """There is nothing to attribute to."""
