"""Stage 2, predict: running one model on one image.

Target images and their axes, the predictor factory (``factory.make_predictor``: the weights choice once, then
one adapter: ``blackbox``, ``torch_greybox`` or ``onnx_greybox``), what every predictor shares (``predictor``),
tiling, the perturbation layer and channel dropout, predictions and masks (``segmentation``), whether a model fits
the images (``fit``) and time limits. Imports :mod:`bioimage_cte.base` and :mod:`bioimage_cte.zoo`.
"""
