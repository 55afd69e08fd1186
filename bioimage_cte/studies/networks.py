"""A model package's torch network outside bioimageio.core: load it, prepare its inputs, predict, measure Dice.

The fine-tuning study (:mod:`bioimage_cte.studies.finetune`) and the CKA maps (:mod:`bioimage_cte.studies.cka`)
train and probe a package's network directly. :func:`load_packaged_network` loads its ``pytorch_state_dict``
weights (``torch.load(..., weights_only=True)``, through bioimageio.core) under the same code policy as grey-box
ranking (:mod:`bioimage_cte.zoo.trust`), with its preprocessing and input size rules; :func:`prepare_input` and
:func:`predict_foreground` then pad and normalise a raw image exactly as the packaged pipeline run by
:mod:`bioimage_cte.predict.predictor` does (:func:`bioimage_cte.demozoo.training.normalize` reproduces bioimageio.core's
normalisation).

This module imports torch and bioimageio.core when its functions run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte.base.errors import InvalidModelError
from bioimage_cte.cte.metrics import foreground_dice
from bioimage_cte.demozoo.training import EPS, Outputs, Preprocessing, normalize
from bioimage_cte.zoo.trust import CodePolicy, greybox_descr

__all__ = ["PackagedNetwork", "load_packaged_network", "normalize_input", "predict_foreground", "prepare_input",
           "scratch_network", "test_dice"]


@dataclass
class PackagedNetwork:
    """A package's torch network with what is needed to train and run it outside bioimageio.core."""

    name: str
    source: str
    net: Any  # torch.nn.Module, eval mode, logits out
    preprocessing: Preprocessing
    percentiles: tuple[float, float]
    outputs: Outputs
    architecture: dict[str, Any]
    tags: tuple[str, ...]
    step: int  # input sides must be min_size + n * step
    min_size: int
    halo: int  # context padded around an image before prediction, as bioimage-cte's predictors do
    descr: Any = field(repr=False, default=None)

    @property
    def architecture_key(self) -> str:
        """Architectures that are equal have equal keys (callable, kwargs and file hash)."""
        return "{callable}({kwargs}) sha256={sha256}".format(**self.architecture)


def _preprocessing(descr: Any, location: str) -> tuple[Preprocessing, tuple[float, float]]:
    ops = [p for p in descr.inputs[0].preprocessing if p.id not in ("ensure_dtype", "binarize")]
    if len(ops) != 1 or ops[0].id not in ("zero_mean_unit_variance", "scale_range"):
        raise InvalidModelError(f"{location}: input preprocessing {[p.id for p in ops]}; fine-tuning supports "
                                "exactly one of zero_mean_unit_variance or scale_range (per image)")
    kwargs = ops[0].kwargs
    axes = {str(a) for a in (getattr(kwargs, "axes", None) or ())}
    if axes and not {"y", "x"} <= axes or abs(float(getattr(kwargs, "eps", EPS)) - EPS) > 1e-12:
        raise InvalidModelError(f"{location}: {ops[0].id} over axes {sorted(axes)} with eps "
                                f"{getattr(kwargs, 'eps', None)}; fine-tuning supports per-image (y, x) "
                                f"normalisation with eps {EPS}")
    if ops[0].id == "scale_range":
        return "scale_range", (float(kwargs.min_percentile), float(kwargs.max_percentile))
    return "zero_mean_unit_variance", (1.0, 99.8)


def load_packaged_network(location: str | Path, *, name: str | None = None,
                          code_policy: CodePolicy | None = None) -> PackagedNetwork:
    """Load a package's ``pytorch_state_dict`` network, its preprocessing and its input size rules.

    The architecture is built only if ``code_policy`` (default: trusted installed libraries only, see
    :mod:`bioimage_cte.zoo.trust`) allows it, exactly as for grey-box ranking.

    Raises
    ------
    InvalidModelError
        The package has no ``pytorch_state_dict`` weights, no sigmoid output, or a preprocessing other than one
        per-image normalisation; the message names the package.
    UntrustedCodeError
        Its architecture is package code that ``code_policy`` does not allow.
    """
    from bioimageio.core.backends.pytorch_backend import load_torch_model
    from bioimageio.spec.model import v0_5

    from bioimage_cte.predict.tiling import spatial_spec
    from bioimage_cte.zoo.models import load_model
    from bioimage_cte.zoo.trust import available_weight_formats

    location = str(location)
    descr = load_model(location)
    weights = descr.weights.pytorch_state_dict
    if weights is None:
        raise InvalidModelError(f"{location}: fine-tuning needs pytorch_state_dict weights; this package has "
                                f"{', '.join(available_weight_formats(descr))}; leave it out of the benchmark")
    if not any(p.id == "sigmoid" for p in descr.outputs[0].postprocessing):
        raise InvalidModelError(f"{location}: output has no sigmoid postprocessing; fine-tuning trains logits with "
                                "Dice + BCE and needs a sigmoid-output segmentation model")
    preprocessing, percentiles = _preprocessing(descr, location)
    # the network is built from the description the policy allows (an installed module may stand in for the
    # package's own architecture file); the package's own description is kept for export
    allowed = greybox_descr(descr, code_policy or CodePolicy(), name=location)
    try:
        net = load_torch_model(allowed.weights.pytorch_state_dict, load_state=True, devices=["cpu"]).eval()
    except Exception as e:
        raise InvalidModelError(f"{location}: could not load the torch network ({type(e).__name__}: {e})") from e
    channels = next((len(a.channel_names) for a in descr.outputs[0].axes if isinstance(a, v0_5.ChannelAxis)), 1)
    spec = spatial_spec(descr, "y")
    arch = weights.architecture
    return PackagedNetwork(
        name=name or str(descr.name), source=location, net=net, preprocessing=preprocessing, percentiles=percentiles,
        outputs="foreground" if channels == 1 else "foreground+boundary",
        architecture={"callable": str(arch.callable), "kwargs": dict(arch.kwargs),
                      # a file architecture is identified by its content, a library one by its module
                      "sha256": str(getattr(arch, "sha256", None) or getattr(arch, "import_from", ""))},
        tags=tuple(str(t) for t in descr.tags), step=max(spec.step, 1), min_size=spec.minimum, halo=spec.halo,
        descr=descr)


def scratch_network(model: PackagedNetwork, *, seed: int) -> PackagedNetwork:
    """The same architecture and preprocessing with a fresh, seeded random initialisation."""
    import torch
    from bioimageio.core.backends.pytorch_backend import load_torch_model

    with torch.random.fork_rng():  # seeds the initialisation without touching the caller's global RNG
        torch.manual_seed(seed)
        net = load_torch_model(model.descr.weights.pytorch_state_dict, load_state=False).eval()
    kwargs = ", ".join(f"{k}={v}" for k, v in model.architecture["kwargs"].items() if k in ("features", "depth"))
    return PackagedNetwork(**{**model.__dict__, "net": net, "name": f"scratch ({kwargs or model.name})"})


def _pad_to_valid(image: np.ndarray, model: PackagedNetwork) -> tuple[np.ndarray, tuple[int, int]]:
    # the predictors' padding: what the packaged pipeline is fed at prediction time
    from bioimage_cte.predict.tiling import SpatialSpec, pad_to_valid

    spec = SpatialSpec(model.min_size, model.step, model.halo)
    return pad_to_valid(image, (spec, spec), name=model.source)


def prepare_input(model: PackagedNetwork, image: np.ndarray) -> np.ndarray:
    """The network input for a raw (y, x) image: padded to a valid size, then the package's normalisation.

    The order is that of the packaged pipeline run by :mod:`bioimage_cte.predict.predictor`, which normalises the
    padded image.
    """
    return normalize_input(model, _pad_to_valid(image.astype(np.float32), model)[0])


def normalize_input(model: PackagedNetwork, image: np.ndarray) -> np.ndarray:
    """The package's normalisation of a raw (y, x) image, without padding."""
    return normalize(image, method=model.preprocessing, percentiles=model.percentiles)


def predict_foreground(model: PackagedNetwork, image: np.ndarray, *, net: Any | None = None) -> np.ndarray:
    """Foreground probability (y, x) of a raw image, as the package's pipeline computes it.

    ``net`` replaces the package's network (e.g. a fine-tuned copy).
    """
    import torch

    padded, before = _pad_to_valid(image.astype(np.float32), model)
    x = normalize_input(model, padded)
    net = model.net if net is None else net
    with torch.no_grad():
        prob = torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(x))[None, None]))[0, 0].numpy()
    return prob[before[0] : before[0] + image.shape[0], before[1] : before[1] + image.shape[1]]


def test_dice(model: PackagedNetwork, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
              net: Any | None = None) -> float:
    """Mean foreground Dice (threshold 0.5) over labelled images."""
    net = model.net if net is None else net
    was_training = net.training
    net.eval()
    try:
        return float(np.mean([foreground_dice(predict_foreground(model, im, net=net), lab)
                              for im, lab in zip(images, labels, strict=True)]))
    finally:
        net.train(was_training)
