"""bioimage-cte: rank BioImage Model Zoo segmentation models on unlabeled target images.

The method is the Consistency-based Transferability Estimator (CTE; Talks & Kreshuk,
arXiv 2503.00450): a model that transfers well predicts consistently when its input or its
internal features are perturbed.

The public API, re-exported here: :func:`rank`, :func:`evaluate`, :class:`RankOptions`,
:data:`ESTIMATORS` and :data:`LABEL_FREE` (the estimator names), :func:`make_estimator`.

Sub-packages, in the order an image meets them (each imports only those before it):

base
    Errors, lazy imports, safe file writes, the version.
zoo
    Finding and opening untrusted packages: sources, zip and YAML checks, the model description, which code
    may run (``trust``) and which weights each model runs with (``weights``).
predict
    Running one model on one image: images, the predictor factory and its adapters, tiling, the scored output.
cte
    The method: perturbations, consistency, the estimators and their registry, metrics.
run
    ``RankOptions``, the entry points ``rank`` and ``evaluate``, scoring, ranking, evaluation, zoo jobs.
outputs
    Model-card entries, HTML and zoo reports, output destinations.
cli
    The ``bioimage-cte`` command line.

Beside them: ``demozoo`` (how the demo zoo is trained on synthetic domains and packaged) and ``studies``
(transfer matrix, fine-tuning benchmark, CKA). The Prefect flows live in ``flows/`` of the repository and install
as ``bioimage_cte_flows``; this package never imports prefect.

Heavy dependencies (torch, bioimageio.core) are imported lazily, and so is the API below, so importing this
package and ``bioimage-cte --help`` stay fast.

Examples
--------
>>> import bioimage_cte
>>> bioimage_cte.RankOptions().estimator in bioimage_cte.LABEL_FREE
True
"""

from __future__ import annotations

import importlib
from typing import Any

from bioimage_cte.base.version import __version__

__all__ = ["ESTIMATORS", "LABEL_FREE", "RankOptions", "__version__", "evaluate", "make_estimator", "rank"]

# name -> the module that defines it; imported on first use (PEP 562)
_API = {"rank": "bioimage_cte.run.pipeline", "evaluate": "bioimage_cte.run.pipeline",
        "RankOptions": "bioimage_cte.run.options", "ESTIMATORS": "bioimage_cte.cte.registry",
        "LABEL_FREE": "bioimage_cte.cte.registry", "make_estimator": "bioimage_cte.cte.registry"}


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'bioimage_cte' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
