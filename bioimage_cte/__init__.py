"""bioimage-cte: rank BioImage Model Zoo segmentation models on unlabeled target images.

The method is the Consistency-based Transferability Estimator (CTE; Talks & Kreshuk,
arXiv 2503.00450): a model that transfers well predicts consistently when its input or its
internal features are perturbed.

Modules
-------
The method, in the order an image meets it:

options
    ``RankOptions``: every run option in one frozen, keyword-only object.
sources
    Finding models: rdf.yaml files, package folders and zips, folders of packages, a zoo collection index, URLs.
images
    Reading target images (and labels) from folders, globs and files.
trust
    Which code shipped inside a package may run.
predictors
    Black-box and grey-box predictors over ``bioimageio.core`` prediction pipelines.
perturbations, seeds
    Input perturbations and feature dropout; every random draw derived from the run's seed.
segmentation
    A model's ``Prediction``; masks and instance labels from probability maps.
consistency
    Consistency scores between a clean and a perturbed prediction, and their aggregation over images.
estimators
    CTE and label-free baselines behind one interface, with a registry.
scoring
    Running each model over the images once clean and once per perturbation.
ranking
    Per-image scores to a ranking and its JSON.
metrics, evaluation
    True performance against labels; agreement between an estimated and the true ranking.
pipeline
    The entry points: ``rank`` and ``evaluate`` (find, filter, check, score, rank).
results, jobs
    The results database, and a zoo-wide run planned as jobs over it (used by the Prefect flow).
annotate, packages, reports, fileutils
    Writing rankings back onto model cards, zoo reports and the HTML report; safe file writes.
cli
    The ``bioimage-cte`` command line.

Sub-packages: ``demozoo`` (how the demo zoo is trained on synthetic domains and packaged) and ``studies``
(transfer matrix, fine-tuning benchmark, CKA). The Prefect flows live in ``flows/`` of the repository and install
as ``bioimage_cte_flows``; this package never imports prefect.

Heavy dependencies (torch, bioimageio.core) are imported lazily, so importing this
package and ``bioimage-cte --help`` stay fast.
"""

__version__ = "0.2.0"

__all__ = ["__version__"]
