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
synthetic_nd
    Seeded synthetic 3D nuclei volumes and 2-channel (nuclei + membrane) cells.
training_nd
    Training any demo architecture on 3D or multi-channel images, for foreground, boundary or softmax outputs.
packaging_nd
    Writing those networks as bioimageio packages with named axes and channels (``examples/build_shape_zoo.py``).
archs
    The demo zoo's network architectures (shipped byte-identical inside every demo package): a 2D UNet, a 3D UNet,
    an encoder-decoder without skips and a ResNet-like encoder with a feature-pyramid decoder.
"""
