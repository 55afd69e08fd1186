"""bioimage-cte: rank BioImage Model Zoo segmentation models on unlabeled target images.

The method is the Consistency-based Transferability Estimator (CTE; Talks & Kreshuk,
arXiv 2503.00450): a model that transfers well predicts consistently when its input or its
internal features are perturbed.

Modules
-------
errors
    One error root, ``BioimageCteError``; every message names the file and the fix.
images
    Reading target images (and labels) from folders, globs and files.
synthetic
    Seeded generators of realistic synthetic microscopy domains with instance labels.
sources
    Finding models: rdf.yaml files, package folders and zips, folders of packages,
    a zoo collection index, URLs.
predictors
    Black-box and grey-box predictors over ``bioimageio.core`` prediction pipelines.
perturbations
    Input-space perturbations (noise, brightness, contrast, gamma) and feature dropout.
segmentation
    Turning probability maps into masks and instance label images.
consistency
    Consistency scores between a clean and a perturbed prediction.
estimators
    CTE and label-free baselines behind one interface, with a registry.
evaluation
    True performance against labels and agreement between rankings.
ranking
    Ranking a set of models on a set of images, and evaluating rankings against labels.
transfer
    The transfer matrix: true performance of every model on every labelled target.
annotate
    Writing a ranking back onto the model cards (``config.bioimage_cte`` of each RDF).
reports
    Zoo reports (the collection's per-tool report shape) and the HTML report.
training, packaging, archs
    How the demo zoo's models are trained on synthetic domains and packaged for bioimage.io.
cli
    The ``bioimage-cte`` command line.

Heavy dependencies (torch, bioimageio.core) are imported lazily, so importing this
package and ``bioimage-cte --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
