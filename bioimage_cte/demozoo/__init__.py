"""The demo zoo: how its models are trained on seeded synthetic domains and packaged for bioimage.io.

Not part of the method: this sub-package builds ``resources/zoo`` (``examples/build_demo_zoo.py``) and the
synthetic targets the tests and benchmarks rank on.

Modules
-------
synthetic
    Seeded generators of synthetic microscopy domains with instance labels.
training
    Training a small UNet on a synthetic domain.
packaging
    Writing a trained network as a bioimageio model package (rdf.yaml, weights, test tensors).
archs
    The demo zoo's network architectures (shipped byte-identical inside every demo package).
"""
