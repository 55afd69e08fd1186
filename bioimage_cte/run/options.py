"""The run options: one frozen object for everything that is not a model or an image.

The command line, the library entry point (:mod:`bioimage_cte.run.pipeline`), the zoo jobs
(:mod:`bioimage_cte.run.jobs`),
the Prefect flow and the benchmarks all build one :class:`RankOptions` and pass it on; nothing passes options as
``**kwargs``. Construction is keyword-only and an unknown name is an error, so a typo never silently becomes the
default.

Examples
--------
>>> RankOptions(estimator="cte-input", strength=0.05).strength
0.05
>>> RankOptions(p=0.2)
Traceback (most recent call last):
...
TypeError: RankOptions.__init__() got an unexpected keyword argument 'p'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bioimage_cte.cte.consistency import CONSISTENCIES, Consistency
from bioimage_cte.cte.estimators import EstimatorConfig
from bioimage_cte.cte.perturbations import INPUT_KINDS, InputKind
from bioimage_cte.cte.registry import AUTO_STRENGTH, ESTIMATORS, make_estimator
from bioimage_cte.predict.images import DEFAULT_MAX_PIXELS
from bioimage_cte.zoo.archives import DEFAULT_MAX_ENTRY_BYTES
from bioimage_cte.zoo.tags import matches_tag
from bioimage_cte.zoo.trust import CodePolicy

if TYPE_CHECKING:
    from bioimage_cte.cte.estimators import Estimator

__all__ = ["TASKS", "RankOptions", "parse_budget"]

Task = Literal["semantic", "instance"]
TASKS: tuple[Task, ...] = ("semantic", "instance")
#: Seconds one model may take on one set of images: generous, a limit for a hung model, not a slow one.
DEFAULT_TIME_LIMIT = 3600.0


def default_estimator(tag: str | None) -> str:
    """The default estimator for candidates of ``tag``: ``tta+consensus+boundary`` for nuclei (chosen and tested on
    nuclei only), ``tta+consensus`` for everything else.

    Examples
    --------
    >>> default_estimator("nuclei"), default_estimator(None)
    ('tta+consensus+boundary', 'tta+consensus')
    """
    return "tta+consensus+boundary" if tag is not None and matches_tag(["nuclei"], tag) else "tta+consensus"


@dataclass(frozen=True, kw_only=True)
class RankOptions:
    """How to rank: the estimator and every run option that is not a model or an image.

    Parameters
    ----------
    estimator : str, optional
        Estimator name from :data:`bioimage_cte.cte.registry.ESTIMATORS`; default :func:`default_estimator` of
        ``tag``: ``"tta+consensus+boundary"`` for nuclei models, else ``"tta+consensus"`` (both chosen on
        development targets with models of several training recipes: see the README's ranking-quality tables).
    task : {"semantic", "instance"}
        What the models segment; chooses the default consistency.
    consistency : {"soft", "hard", "instance"}, optional
        Consistency score of the CTE estimators; default ``"soft"`` (``"instance"`` for the instance task).
    perturbation : {"gaussian", "brightness", "contrast", "gamma"}
        Input perturbation of ``cte-input``.
    strength : float or "auto", optional
        Perturbation strength: the dropout rate for the dropout estimators (default 0.2), the fraction of the
        image's range for ``cte-input`` (default 0.1). ``"auto"`` chooses it per family from the candidates' own
        predictions (:mod:`bioimage_cte.run.strength`; ``cte-dropout``, ``cte-input`` and ``cte``).
    repeats : int
        Perturbed passes per image; their consistencies are averaged.
    seed : int
        The run's seed; every random draw derives from it (:mod:`bioimage_cte.cte.seeds`).
    axes : str, optional
        Axes of the image files when ambiguous (``"yx"``, ``"cyx"``, ``"zyx"``, ...).
    channels : tuple of int, optional
        Image channels to feed, in this order (``"0,2"`` is accepted): a model taking that many channels
        gets them, a single-channel model the first; default: every channel (averaged for single-channel models).
    inputs : str, optional
        Models with several inputs: the image channel(s) feeding each, ``"input0=0,input1=1"`` (see
        :mod:`bioimage_cte.zoo.inputs`); default: by the inputs' numbered names, when they say it.
    output_channel : str, optional
        The output to score: channel name, output tensor id, ``TENSOR:CHANNEL`` or channel index; default: chosen
        from the output's names (see :mod:`bioimage_cte.zoo.readout`).
    layer : str, optional
        Module to perturb for grey-box estimators; default: the bottleneck, found automatically.
    weight_format : str, optional
        Weights for black-box prediction (``"torchscript"``, ``"onnx"``, ...); default: bioimageio's order.
    device : str
        Torch device.
    tag : str, optional
        Rank only the models whose RDF has this tag.
    trust_code : bool
        Run Python code shipped inside packages (see :mod:`bioimage_cte.zoo.trust`).
    trusted_libraries : tuple of str
        Import prefixes trusted besides the default ones.
    budget : {"all", "auto"} or int
        Images to score: every image (``"all"``), as many as it takes to settle the top model (``"auto"``, see
        :mod:`bioimage_cte.run.budget`), or at most that many, in the run's seeded order.
    max_pixels : int
        Most pixel values of one image (checked from its header before decoding); a larger image is unreadable.
    max_entry_bytes : int
        Largest unpacked member of a package zip; a package with a larger one is refused.
    skip_bad_images : bool
        Rank on the readable images and record the unreadable ones, instead of stopping before any model runs.
    time_limit : float
        Seconds one model may take on one set of images (loading included); a model still running then is killed
        (it runs in a child process, :mod:`bioimage_cte.run.isolated`) and recorded as failed, and the others go
        on. 0: no limit, and models run in this process.
    predict_dice : bool
        Give each ranked model a predicted Dice with a 90 % interval (:mod:`bioimage_cte.cte.calibration`); keeps
        every model's clean masks for the consensus signal.
    calibration : str, optional
        Calibration file for the predicted Dice (default: the shipped ``resources/calibration/predicted_dice.json``).
    """

    estimator: str | None = None
    task: Task = "semantic"
    consistency: Consistency | None = None
    perturbation: InputKind = "gaussian"
    strength: float | str | None = None
    repeats: int = 1
    seed: int = 0
    axes: str | None = None
    channels: tuple[int, ...] | None = None
    inputs: tuple[tuple[str, tuple[int, ...]], ...] | None = None
    output_channel: str | None = None
    layer: str | None = None
    weight_format: str | None = None
    device: str = "cpu"
    tag: str | None = None
    trust_code: bool = False
    trusted_libraries: tuple[str, ...] = ()
    budget: int | str = "all"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES
    skip_bad_images: bool = False
    time_limit: float = DEFAULT_TIME_LIMIT
    predict_dice: bool = True
    calibration: str | None = None

    def __post_init__(self) -> None:
        if self.estimator is None:
            object.__setattr__(self, "estimator", default_estimator(self.tag))
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}: use one of {', '.join(ESTIMATORS)}")
        _one_of("task", self.task, TASKS)
        _one_of("perturbation", self.perturbation, INPUT_KINDS)
        if self.consistency is not None:
            _one_of("consistency", self.consistency, CONSISTENCIES)
        if self.repeats < 1:
            raise ValueError(f"repeats={self.repeats}: use 1 or more perturbed runs per image")
        if isinstance(self.strength, str):
            if self.strength != "auto":
                try:  # "0.3" from a command line
                    object.__setattr__(self, "strength", float(self.strength))
                except ValueError:
                    raise ValueError(f"strength {self.strength!r}: use a number or 'auto'") from None
            elif self.estimator not in AUTO_STRENGTH:
                raise ValueError(f"strength 'auto' chooses the strength of {', '.join(AUTO_STRENGTH)}; "
                                 f"{self.estimator!r} has no automatic strength: give a number")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}: use a non-negative integer")
        if not self.time_limit >= 0:  # also refuses nan
            raise ValueError(f"time_limit={self.time_limit}: use seconds >= 0 (0: no limit)")
        for name in ("max_pixels", "max_entry_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: use a positive limit")
        # a list from a command line or a JSON file becomes a tuple, so the options stay hashable
        object.__setattr__(self, "trusted_libraries", tuple(self.trusted_libraries))
        if self.channels is not None:
            object.__setattr__(self, "channels", _channel_list(self.channels))
        if self.inputs is not None:
            from bioimage_cte.zoo.inputs import parse_inputs

            object.__setattr__(self, "inputs", parse_inputs(self.inputs))
        object.__setattr__(self, "budget", parse_budget(self.budget))  # "8" from a command line becomes 8
        self.make_estimator()  # validates the strength for this estimator

    @property
    def inputs_text(self) -> str | None:
        """``inputs`` as the command line writes it (``"input0=0,input1=1"``), None when not given."""
        if self.inputs is None:
            return None
        return ",".join(f"{name}={'+'.join(map(str, channels))}" for name, channels in self.inputs)

    @property
    def fixed_strength(self) -> float | None:
        """The strength given as a number (None for the default or ``"auto"``, which start from the default)."""
        return None if self.strength == "auto" else self.strength  # type: ignore[return-value]

    @property
    def consistency_kind(self) -> Consistency:
        """The consistency score in effect: the given one, else the task's default."""
        return self.consistency or ("instance" if self.task == "instance" else "soft")

    def replace(self, **changes: Any) -> RankOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def estimator_config(self) -> EstimatorConfig:
        """What the estimators are configured from: the fixed strength, the consistency in effect, and so on."""
        return EstimatorConfig(strength=self.fixed_strength, consistency=self.consistency_kind,
                               perturbation=self.perturbation, repeats=self.repeats, calibration=self.calibration)

    def make_estimator(self, name: str | None = None) -> Estimator:
        """The estimator ``name`` (default: :attr:`estimator`) configured by these options."""
        return make_estimator(name or self.estimator, self.estimator_config())

    def code_policy(self) -> CodePolicy:
        """The :class:`bioimage_cte.zoo.trust.CodePolicy` of these options."""
        return CodePolicy.with_libraries(self.trusted_libraries, trust_code=self.trust_code)

    def to_json_dict(self) -> dict[str, Any]:
        """Every option, JSON-ready (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> RankOptions:
        """Options from :meth:`to_json_dict` (e.g. a Prefect flow parameter); unknown names are an error."""
        return cls(**dict(data))

    def score_settings(self, estimator: str | None = None) -> dict[str, Any]:
        """What changes the scores of ``estimator`` (default :attr:`estimator`): the key of the results database.

        The estimator's own settings plus seed, axes, layer and weights; the trust options only when set, so
        a model skipped without them is scored again with them. Device and tag change no score (a tag only
        chooses the default estimator).
        """
        settings: dict[str, Any] = {**self.make_estimator(estimator).settings(), "seed": self.seed,
                                    "axes": self.axes, "layer": self.layer, "weight_format": self.weight_format}
        # set only when given, so that results stored before these options existed keep their key
        if self.channels is not None:
            settings["channels"] = list(self.channels)
        if self.output_channel is not None:
            settings["output_channel"] = self.output_channel
        if self.inputs is not None:
            settings["inputs"] = self.inputs_text
        if self.trust_code:
            settings["trust_code"] = True
        if self.trusted_libraries:
            settings["trusted_libraries"] = sorted(self.trusted_libraries)
        return settings

    def run_settings(self) -> dict[str, Any]:
        """Each option as a ranking JSON's ``settings`` records it (read by :mod:`bioimage_cte.outputs.annotate`)."""
        return {"seed": self.seed, "task": self.task, "axes": self.axes, "device": self.device, "layer": self.layer,
                "channels": None if self.channels is None else list(self.channels),
                "output_channel": self.output_channel, "inputs": self.inputs_text,
                "weight_format": self.weight_format, "tag": self.tag, "trust_code": self.trust_code,
                "trusted_libraries": list(self.trusted_libraries), "budget": self.budget,
                "max_pixels": self.max_pixels, "max_entry_bytes": self.max_entry_bytes,
                "skip_bad_images": self.skip_bad_images, "time_limit": self.time_limit}


def parse_budget(value: str | int) -> int | str:
    """``"auto"``, ``"all"`` or a positive image count; anything else is a one-line error."""
    if isinstance(value, str) and value in ("auto", "all"):
        return value
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"budget {value!r}: use 'auto' (stop when the top model is settled), 'all', or a number of "
                         "images >= 1")
    return n


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")


def _channel_list(value: Any) -> tuple[int, ...]:
    """``"0,2"``, ``[0, 2]`` or ``(0, 2)`` as a tuple of channel indices."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        channels = tuple(int(str(c).strip()) for c in items)
    except ValueError:
        raise ValueError(f"channels={value!r}: use channel indices separated by commas, e.g. 0,2") from None
    if not channels or min(channels) < 0 or len(set(channels)) != len(channels):
        raise ValueError(f"channels={value!r}: use distinct channel indices >= 0 separated by commas, e.g. 0,2")
    return channels
