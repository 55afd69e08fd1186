"""How good the winner will be: label-free signals of one model on one target -> its predicted Dice, with an interval.

A rank alone does not say whether the first model is good enough or whether the user must label and fine-tune. The
calibration maps a model's label-free signals on the user's images (its ``tta`` consistency, its agreement with
the other candidates' consensus) to its expected foreground Dice. It is fitted on a transfer matrix: the true Dice of
every demo model on every labelled target, beside the same signals measured there (:func:`fit_calibration`).

* Model: least squares (a tiny ridge) on the signals, one fit per *feature set*, tried in order: a run that has both
  signals uses both, one that lacks the consensus (fewer than 3 candidates) uses ``tta`` alone, and so on.
* Validation: leave one target out (:func:`leave_one_target_out`): every model x target pair is predicted by a fit
  that never saw its target.
* Interval: split conformal prediction on those held-out absolute residuals. The half-width is their
  ``ceil((n + 1) * coverage) / n`` quantile, so a new pair from the same distribution of targets is covered with
  probability at least ``coverage`` (90 %).
* Support: outside what the fit saw the interval widens (a task it was not fitted on, a signal out of the fitted
  range) or the estimate is withheld (3D images; no usable signal), always with a note.

The fitted calibration is a small versioned JSON (``resources/calibration/predicted_dice.json``), written by
:meth:`Calibration.to_json_dict` and read by :func:`load_calibration`; ``bioimage-cte calibrate`` refits it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte.base.errors import BioimageCteError

__all__ = ["CALIBRATION_FORMAT", "DEFAULT_CALIBRATION", "DEFAULT_FEATURE_SETS", "Calibration", "CalibrationRow",
           "DicePrediction", "FeatureFit", "conformal_half_width", "fit_calibration", "leave_one_target_out",
           "load_calibration"]

#: Version of the calibration file's layout; a file of another version is refused with the refit command.
CALIBRATION_FORMAT = 1
#: The shipped calibration (editable installs and the repository; a wheel without it gets no predicted Dice).
DEFAULT_CALIBRATION = Path(__file__).resolve().parents[2] / "resources" / "calibration" / "predicted_dice.json"
#: Feature sets, best first: a run uses the first one whose signals it has.
DEFAULT_FEATURE_SETS: tuple[tuple[str, ...], ...] = (("tta", "consensus"), ("consensus",), ("tta",))
#: Signals checked against the fitted range though not regressed on (a near-constant mask is out of support).
SUPPORT_ONLY = ("foreground",)
#: Fewest candidates for a meaningful consensus (a majority vote of two is their intersection).
MIN_CONSENSUS_MODELS = 3
#: Outside the support the interval's half-width is multiplied by this.
WIDEN = 2.0
#: How far (in signal units) a value may lie outside the fitted range before it counts as out of range.
RANGE_MARGIN = 0.02
_RIDGE = 1e-3


@dataclass(frozen=True)
class CalibrationRow:
    """One model on one labelled target: its label-free signals and its true Dice."""

    target: str
    model: str
    task: str
    signals: Mapping[str, float]
    dice: float


@dataclass(frozen=True)
class DicePrediction:
    """A model's predicted Dice with its interval, or why there is none (``estimate`` None)."""

    estimate: float | None
    interval: tuple[float, float] | None
    note: str = ""
    features: tuple[str, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        return {"predicted_dice": self.estimate,
                "predicted_dice_interval": None if self.interval is None else list(self.interval),
                "predicted_dice_note": self.note, "predicted_dice_signals": list(self.features)}


@dataclass(frozen=True)
class FeatureFit:
    """Least squares of Dice on one feature set, with its conformal half-width and leave-one-target-out errors."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    intercept: float
    half_width: float
    validation: Mapping[str, float] = field(default_factory=dict)

    def estimate(self, signals: Mapping[str, float]) -> float:
        x = np.array([signals[f] for f in self.features], dtype=float)
        return float(np.clip(self.intercept + x @ np.asarray(self.weights), 0.0, 1.0))


@dataclass(frozen=True)
class Calibration:
    """The fitted calibration: one :class:`FeatureFit` per feature set, and what it was fitted on."""

    fits: tuple[FeatureFit, ...]
    coverage: float
    tasks: tuple[str, ...]
    ranges: Mapping[str, tuple[float, float]]
    fitted_on: Mapping[str, Any]
    min_models: int = MIN_CONSENSUS_MODELS

    def predict(self, signals: Mapping[str, float], *, task: str | None = None,
                volumetric: bool = False) -> DicePrediction:
        """The predicted Dice of one model from its ``signals``; withheld or widened outside the support.

        Examples
        --------
        >>> rows = [CalibrationRow(f"t{i % 4}", f"m{i}", "nuclei", {"tta": 0.5 + i / 40, "foreground": 0.2},
        ...                        0.4 + i / 40) for i in range(16)]
        >>> cal = fit_calibration(rows, feature_sets=(("tta",),))
        >>> round(cal.predict({"tta": 0.7, "foreground": 0.2}, task="nuclei").estimate, 2)
        0.6
        >>> cal.predict({"tta": 0.7}, task="nuclei", volumetric=True).estimate is None
        True
        """
        if volumetric:
            return DicePrediction(None, None, "withheld: the calibration saw 2D images only, these are 3D")
        have = {k for k, v in signals.items() if v is not None and math.isfinite(v)}
        fit = next((f for f in self.fits if set(f.features) <= have), None)
        if fit is None:
            need = " or ".join("+".join(f.features) for f in self.fits)
            return DicePrediction(None, None, f"withheld: needs the {need} signals, which this run lacks")
        estimate, half, notes = fit.estimate(signals), fit.half_width, []
        if task is None or task not in self.tasks:
            half *= WIDEN
            seen = ", ".join(self.tasks)
            notes.append(f"task {task or 'unknown (no --tag)'} not calibrated (fitted on {seen}): interval widened")
        outside = [name for name in (*fit.features, *SUPPORT_ONLY) if name in self.ranges and name in have
                   and not self.ranges[name][0] - RANGE_MARGIN <= signals[name] <= self.ranges[name][1] + RANGE_MARGIN]
        if outside:
            half *= WIDEN
            what = ", ".join(f"{n} {signals[n]:.2f} (fitted {self.ranges[n][0]:.2f}-{self.ranges[n][1]:.2f})"
                             for n in outside)
            notes.append(f"outside the calibrated range: {what}: interval widened")
        interval = (max(0.0, estimate - half), min(1.0, estimate + half))
        return DicePrediction(round(estimate, 4), (round(interval[0], 4), round(interval[1], 4)), "; ".join(notes),
                              fit.features)

    def to_json_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "what": "predicted foreground Dice from label-free signals",
                "coverage": self.coverage, "tasks": list(self.tasks), "min_models": self.min_models,
                "ranges": {k: list(v) for k, v in self.ranges.items()},
                "fits": [{"features": list(f.features), "weights": list(f.weights), "intercept": f.intercept,
                          "half_width": f.half_width, "validation": dict(f.validation)} for f in self.fits],
                "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_json_dict(cls, payload: Mapping[str, Any], *, where: str = "calibration") -> Calibration:
        if payload.get("format") != CALIBRATION_FORMAT:
            raise BioimageCteError(f"{where} has calibration format {payload.get('format')!r}, this version reads "
                                   f"{CALIBRATION_FORMAT}; refit it with 'bioimage-cte calibrate'")
        try:
            fits = tuple(FeatureFit(tuple(f["features"]), tuple(float(w) for w in f["weights"]),
                                    float(f["intercept"]), float(f["half_width"]), dict(f.get("validation", {})))
                         for f in payload["fits"])
            return cls(fits, float(payload["coverage"]), tuple(payload["tasks"]),
                       {k: (float(v[0]), float(v[1])) for k, v in payload["ranges"].items()},
                       dict(payload.get("fitted_on", {})), int(payload.get("min_models", MIN_CONSENSUS_MODELS)))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise BioimageCteError(f"{where} is not a calibration ({type(e).__name__}: {e}); refit it with "
                                   "'bioimage-cte calibrate'") from e


def load_calibration(path: Path | None = None) -> Calibration | None:
    """The calibration at ``path`` (default: the shipped one); None when the default file is absent.

    Raises
    ------
    BioimageCteError
        A given file that is missing or is not a calibration of this format.
    """
    target = Path(path) if path is not None else DEFAULT_CALIBRATION
    if not target.is_file():
        if path is None:
            return None
        raise BioimageCteError(f"calibration {target} does not exist; write one with 'bioimage-cte calibrate'")
    stat = target.stat()
    # the default estimator and every predicted Dice read it: a zoo run would parse it once per model x target
    return _read_calibration(str(target.resolve()), stat.st_mtime_ns, stat.st_size, str(target))


@functools.lru_cache(maxsize=8)
def _read_calibration(resolved: str, mtime_ns: int, size: int, shown: str) -> Calibration:
    """The calibration file as it is at ``mtime_ns`` and ``size`` (a rewritten file is read again); errors name
    the path as the user gave it (``shown``)."""
    try:
        payload = json.loads(Path(resolved).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BioimageCteError(f"cannot read calibration {shown}: {e}; refit it with 'bioimage-cte calibrate'") from e
    return Calibration.from_json_dict(payload, where=shown)


def _design(rows: Sequence[CalibrationRow], features: Sequence[str]) -> np.ndarray:
    return np.array([[r.signals[f] for f in features] for r in rows], dtype=float)


def _least_squares(rows: Sequence[CalibrationRow], features: Sequence[str]) -> tuple[np.ndarray, float]:
    x, y = _design(rows, features), np.array([r.dice for r in rows], dtype=float)
    a = np.column_stack([x, np.ones(len(rows))])
    penalty = _RIDGE * np.eye(a.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(a.T @ a + penalty, a.T @ y)
    return coef[:-1], float(coef[-1])


def conformal_half_width(residuals: Sequence[float], coverage: float) -> float:
    """Split-conformal half-width: the ``ceil((n + 1) * coverage)``-th smallest absolute residual (inf if n is small).

    Examples
    --------
    >>> conformal_half_width([0.01 * i for i in range(1, 20)], 0.9)
    0.18
    >>> conformal_half_width([0.1, 0.2], 0.9)
    inf
    """
    r = np.sort(np.abs(np.asarray(residuals, dtype=float)))
    k = math.ceil((len(r) + 1) * coverage)
    return float(r[k - 1]) if 0 < k <= len(r) else math.inf


def _usable(rows: Sequence[CalibrationRow], features: Sequence[str]) -> list[CalibrationRow]:
    return [r for r in rows if all(math.isfinite(r.signals.get(f, math.nan)) for f in features)
            and math.isfinite(r.dice)]


def leave_one_target_out(rows: Sequence[CalibrationRow], features: Sequence[str], *, coverage: float = 0.9,
                         top_signal: str | None = None) -> dict[str, Any]:
    """Each row predicted by a fit without its target; errors, and conformal coverage also without its target.

    The coverage check is honest about the target too: a held-out target's interval uses the half-width from the
    held-out residuals of the *other* targets only.

    Returns
    -------
    dict
        ``predicted`` and ``true`` per row (in ``rows`` order, usable rows only), ``mae``, ``mae_top`` (the model
        ``top_signal`` ranks first on each target; default the first feature), ``covered`` per row, ``coverage``,
        ``half_width`` (from all held-out residuals), ``trivial_mae`` and ``trivial_mae_top`` (the fitting set's
        mean Dice as the prediction), ``n`` and ``targets``.
    """
    usable = _usable(rows, features)
    targets = sorted({r.target for r in usable})
    if len(targets) < 3:
        raise ValueError(f"leave-one-target-out needs at least 3 targets with {'+'.join(features)}, got "
                         f"{len(targets)}")
    predicted, trivial = np.empty(len(usable)), np.empty(len(usable))
    for t in targets:
        train = [r for r in usable if r.target != t]
        w, b = _least_squares(train, features)
        idx = [i for i, r in enumerate(usable) if r.target == t]
        predicted[idx] = np.clip(_design([usable[i] for i in idx], features) @ w + b, 0.0, 1.0)
        trivial[idx] = np.mean([r.dice for r in train])
    true = np.array([r.dice for r in usable])
    residual = np.abs(predicted - true)
    covered = np.zeros(len(usable), dtype=bool)
    for t in targets:
        inside = np.array([r.target == t for r in usable])
        covered[inside] = residual[inside] <= conformal_half_width(residual[~inside], coverage)
    signal = top_signal or features[0]
    top = [max((i for i, r in enumerate(usable) if r.target == t), key=lambda i: usable[i].signals.get(signal, -1))
           for t in targets]
    naive = np.abs(trivial - true)
    return {"predicted": predicted.tolist(), "true": true.tolist(), "covered": covered.tolist(),
            "mae": float(residual.mean()), "mae_top": float(residual[top].mean()),
            "coverage": float(covered.mean()), "half_width": conformal_half_width(residual, coverage),
            "trivial_mae": float(naive.mean()), "trivial_mae_top": float(naive[top].mean()),
            "n": len(usable), "targets": targets, "rows": [(r.target, r.model) for r in usable]}


def fit_calibration(rows: Sequence[CalibrationRow], *, feature_sets: Sequence[Sequence[str]] = DEFAULT_FEATURE_SETS,
                    coverage: float = 0.9, fitted_on: Mapping[str, Any] | None = None) -> Calibration:
    """Fit every feature set on all ``rows``; each half-width from its leave-one-target-out residuals.

    Raises
    ------
    ValueError
        Fewer than 3 targets carry a feature set's signals, or ``coverage`` is not in (0, 1).
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage={coverage}: use a fraction in (0, 1), e.g. 0.9")
    fits = []
    for features in feature_sets:
        check = leave_one_target_out(rows, features, coverage=coverage)
        w, b = _least_squares(_usable(rows, features), features)
        validation = {k: round(check[k], 4) for k in ("mae", "mae_top", "coverage", "trivial_mae", "trivial_mae_top")}
        validation.update(n=check["n"], targets=len(check["targets"]))
        fits.append(FeatureFit(tuple(features), tuple(round(float(v), 6) for v in w), round(b, 6),
                               round(check["half_width"], 4), validation))
    names = sorted({f for fs in feature_sets for f in fs} | set(SUPPORT_ONLY))
    ranges = {}
    for name in names:
        values = [r.signals[name] for r in rows if math.isfinite(r.signals.get(name, math.nan))]
        if values:
            ranges[name] = (round(min(values), 4), round(max(values), 4))
    info = {"targets": len({r.target for r in rows}), "pairs": len(rows), **(fitted_on or {})}
    return Calibration(tuple(fits), coverage, tuple(sorted({r.task for r in rows})), ranges, info)
