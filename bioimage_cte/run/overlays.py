"""What the HTML report draws from a ranking: a few models re-run on a few images, clean and perturbed.

:func:`report_overlays` picks the best and the worst ranked models and a seeded handful of images, and
:func:`overlay_predictions` re-runs one model on them with the ranking's own settings: the clean prediction, the
perturbed prediction its estimator compared it with (the draw scoring made, geometric passes mapped back, see
:mod:`bioimage_cte.cte.views`) and the per-pixel disagreement the score averages. The report only renders these
(:mod:`bioimage_cte.outputs.reports`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bioimage_cte.base.errors import one_line
from bioimage_cte.cte.views import perturbed_view, view_of
from bioimage_cte.predict.images import load_target
from bioimage_cte.predict.segmentation import Prediction
from bioimage_cte.run.options import RankOptions
from bioimage_cte.zoo.sources import ModelSource

__all__ = ["options_from_settings", "overlay_predictions", "report_overlays"]


def options_from_settings(settings: dict[str, Any]) -> RankOptions:
    """The options a ranking JSON's settings record (unknown keys, e.g. the estimator's own, are ignored)."""
    names = set(RankOptions.__dataclass_fields__)
    known = {k: v for k, v in settings.items() if k in names and v is not None}
    if settings.get("kind") is not None:
        known["perturbation"] = settings["kind"]
    return RankOptions(**known)


def overlay_predictions(
    location: str, image_paths: Sequence[Path], indices: Sequence[int], options: RankOptions, *,
    on_image: Callable[[], None] | None = None,
) -> list[tuple[np.ndarray, Prediction, Prediction | None, str | None]]:
    """Re-run one model on a few images with a ranking's options: (image, clean, perturbed, caption) per image.

    The perturbed prediction is the one scoring compared with the clean prediction on that image (same draw; see
    :func:`bioimage_cte.cte.views.perturbed_view`), mapped back for a flip or rotation; it and its caption are None
    for an estimator that perturbs nothing.
    """
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    estimator: Any = options.make_estimator()
    greybox = estimator.needs_greybox
    descr = load_model(location, max_entry_bytes=options.max_entry_bytes)
    predictor = make_predictor(descr, name=location, greybox=greybox, layer=options.layer,
                               devices=[options.device], code_policy=options.code_policy(),
                               weight_format=None if greybox else options.weight_format,
                               output_channel=options.output_channel)
    rows = []
    with predictor:
        for i in indices:
            image = load_target(Path(image_paths[i]), axes=options.axes, channels=options.channels,
                                n_channels=predictor.in_channels, model=location, max_pixels=options.max_pixels)
            clean = predictor.predict(image)
            view = perturbed_view(estimator, predictor, image, seed=options.seed, index=i)
            perturbed, caption = (None, None) if view is None else view
            shown = image if predictor.in_channels == 1 else image.mean(axis=0)  # a report shows one grey image
            rows.append((shown, clean, perturbed, caption))
            if on_image is not None:
                on_image()
    return rows


def report_overlays(ranking_json: dict[str, Any], image_paths: Sequence[Path], *, n_images: int = 3,
                    n_models: int = 2, progress: Any = None) -> dict[str, Any]:
    """Clean and perturbed predictions of the top and bottom models on a few images, for the HTML report.

    Each row also holds the per-pixel disagreement the score averages (:func:`~bioimage_cte.cte.consistency.
    disagreement_map`), so the report shows what the score measures rather than thresholded masks.

    Returns
    -------
    dict
        ``{"indices": [...], "perturbation": "dropout" | "input" | "dihedral" | None, "summary": text or None,
        "captions": {index: text}, "consistency": "soft" | "hard" | "instance", "threshold": float, "models":
        {name: [(image, clean, perturbed or None, disagreement or None), ...]}, "errors": {name: text}}``; a model
        that cannot be re-run is named under ``errors`` instead of stopping the report. ``progress`` is a
        :class:`bioimage_cte.run.pipeline.Progress` (its ``plan``, ``start``, ``model`` and ``image`` are called).
    """
    from bioimage_cte.cte.consistency import disagreement_map
    from bioimage_cte.cte.seeds import rng
    from bioimage_cte.zoo.packages import locate_package, rdf_location

    settings = ranking_json.get("settings", {})
    options = options_from_settings(settings)
    models = [m for m in ranking_json.get("models", []) if m.get("score") is not None]
    chosen = models[:n_models] + [m for m in models[-n_models:] if m not in models[:n_models]]
    count = min(n_images, len(image_paths))
    indices = sorted(int(i) for i in rng(options.seed, "report").choice(len(image_paths), count, replace=False))
    estimator = options.make_estimator()
    view = view_of(estimator, layer=options.layer)
    kind = view.consistency if view is not None else options.consistency_kind
    threshold = float(getattr(estimator, "threshold", 0.5))
    out: dict[str, Any] = {"indices": indices, "perturbation": None if view is None else view.family,
                           "summary": None if view is None else view.summary, "captions": {},
                           "consistency": kind, "threshold": threshold, "models": {}, "errors": {}}
    hooks = {name: getattr(progress, name, None) for name in ("plan", "start", "model", "image")}
    if hooks["plan"] is not None:
        hooks["plan"](len(chosen), count)
    if hooks["start"] is not None:
        hooks["start"](len(chosen) * count)
    for model in chosen:
        try:
            location = str(rdf_location(locate_package(model["source"])))
            if hooks["model"] is not None:
                hooks["model"](ModelSource(model["name"], model["source"], kind="rdf", location=location))
            rows = overlay_predictions(location, image_paths, indices, options, on_image=hooks["image"])
            out["captions"].update({i: c for i, (*_, c) in zip(indices, rows, strict=True) if c is not None})
            out["models"][model["name"]] = [
                (image, clean, perturbed, None if perturbed is None else
                 disagreement_map(clean.foreground, perturbed.foreground, kind=kind, threshold=threshold))
                for image, clean, perturbed, _ in rows]
        except Exception as e:  # a report is a view on the ranking: one model that cannot re-run is named
            out["errors"][model["name"]] = one_line(e)
    return out
