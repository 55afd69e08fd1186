"""Problems with a run's settings that every model would hit: reported once, not once per model.

A device torch cannot use is found before any model loads (:func:`check_device`). A ``--layer`` is a module
name inside each network, known only once a model is loaded: :func:`layer_missing_everywhere` turns "layer not
found" failures of every model into one error after the models were tried.
"""

from __future__ import annotations

from collections.abc import Sequence

from bioimage_cte.base.errors import SetupError, one_line

__all__ = ["check_device", "layer_missing_everywhere"]


def check_device(device: str) -> None:
    """Raise :class:`SetupError` unless torch can run on ``device`` here (``cpu`` is checked without importing torch).

    Examples
    --------
    >>> check_device("cpu")
    """
    if device == "cpu":
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise SetupError(f"--device {device!r} is not a torch device ({one_line(e)}); use cpu, cuda, cuda:N or "
                         "mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SetupError(f"--device {device}: torch {torch.__version__} here cannot use CUDA (built without it, or "
                             "no GPU found); use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SetupError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; "
                             "pick one of those")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise SetupError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise SetupError(f"--device {device}: bioimage-cte runs on cpu, cuda or mps; use one of those")


def layer_missing_everywhere(layer: str | None, reasons: Sequence[str], n_scored: int) -> SetupError | None:
    """The one error to report when ``--layer`` was found in no model, else None.

    Parameters
    ----------
    layer : str or None
        The ``--layer`` of the run.
    reasons : sequence of str
        The one-line reason of every model that could not be scored.
    n_scored : int
        Models that got a score.

    Examples
    --------
    >>> str(layer_missing_everywhere("enc9", ["a.zip: layer 'enc9' not found; layers are: enc1"], 0))[:43]
    "--layer 'enc9' is in none of the 1 models ("
    >>> layer_missing_everywhere("enc9", ["a.zip: crashed"], 0) is None
    True
    """
    if layer is None or n_scored or not reasons:
        return None
    marker = f"layer {layer!r} not found"
    if not all(marker in r for r in reasons):
        return None
    return SetupError(f"--layer {layer!r} is in none of the {len(reasons)} models (e.g. {reasons[0]}); drop --layer to "
                      "use each model's bottleneck, or name a module they all have")
