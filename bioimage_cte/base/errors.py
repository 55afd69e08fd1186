"""The errors bioimage-cte raises on bad input.

Every error derives from :class:`BioimageCteError` and from the builtin that fits, so
``except ValueError`` keeps working. Messages name the offending file or value and the fix.
"""

from __future__ import annotations


class BioimageCteError(Exception):
    """Root of every error raised by bioimage-cte on bad input."""


class InvalidModelError(BioimageCteError, ValueError):
    """A model package cannot be used (not found, not valid, not a segmentation model)."""


class NotSegmentationModelError(InvalidModelError):
    """A valid model package, but no segmentation model: its output is no foreground-like map of the image."""


class UnsupportedModelError(InvalidModelError):
    """A valid segmentation model whose inputs or outputs bioimage-cte cannot feed or score (e.g. a time axis)."""


class InvalidImageError(BioimageCteError, ValueError):
    """Target images cannot be read or do not fit the model."""


class ModelRunError(BioimageCteError, RuntimeError):
    """A model loaded but its network crashed or returned NaN/inf on an image."""


class UnsafeArchiveError(BioimageCteError, ValueError):
    """An archive holds entries that would escape the folder it is extracted to, or are too large."""


class InvalidIndexError(BioimageCteError, ValueError):
    """A zoo collection index cannot be read."""


class PackageChangedError(BioimageCteError, ValueError):
    """A model package no longer matches the checksum it had when it was ranked."""


class WriteError(BioimageCteError, OSError):
    """A result (annotated package, report) cannot be written where it was asked to go."""


class AnnotationError(BioimageCteError, RuntimeError):
    """Some models of a ranking could not be annotated.

    ``written`` lists the packages that were annotated anyway and ``failures`` maps each model
    source that failed to its one-line reason.
    """

    def __init__(self, message: str, *, written: list | None = None, failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.written = list(written or [])
        self.failures = dict(failures or {})


class UntrustedCodeError(BioimageCteError, PermissionError):
    """A model needs code shipped in its package, and the user did not allow package code to run."""


class ModelTimeoutError(BioimageCteError, TimeoutError):
    """A model did not finish within its time limit and was stopped (a hung model fails the same way again)."""


class UnsafeYamlError(InvalidModelError):
    """An rdf.yaml is too large, or would expand too far (a YAML alias bomb), to be parsed safely."""


def one_line(text: object) -> str:
    r"""A message (or an exception) on one line, its white space folded; an empty one says what it was.

    Examples
    --------
    >>> one_line("cannot read\n  x.tif"), one_line(OSError())
    ('cannot read x.tif', 'OSError')
    """
    folded = " ".join(str(text).split())
    if folded:
        return folded
    return type(text).__name__ if isinstance(text, BaseException) else "unknown error"


class SetupError(BioimageCteError, RuntimeError):
    """A problem with the run's settings that every model would hit (device, layer): reported once, not per model."""
