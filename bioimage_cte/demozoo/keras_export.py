"""The demo UNet as a Keras model with the same weights, for a ``keras_hdf5`` demo package.

:func:`keras_unet` rebuilds :class:`bioimage_cte.demozoo.archs.unet.UNet2d` layer by layer in Keras
(channels last: TensorFlow's CPU convolutions take no other layout) and copies every weight across:
convolution kernels transposed from (out, in, y, x) to (y, x, in, out), transposed convolutions
from (in, out, y, x) to (y, x, out, in), batch norms with torch's epsilon. :func:`save_keras_h5`
checks that the Keras network gives the torch network's logits before it writes the file.

Needs tensorflow (``pip install 'bioimage-cte[tensorflow]'``). Import lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["keras_unet", "keras_unet_features", "save_keras_h5"]

#: largest |Keras logit - torch logit| accepted on the test image (float32 arithmetic in another order)
TOLERANCE = 1e-3


def _block(keras, x, block, prefix: str):
    conv1, bn1, _, conv2, bn2, _ = block
    for i, (conv, bn) in enumerate(((conv1, bn1), (conv2, bn2))):
        layer = keras.layers.Conv2D(conv.out_channels, 3, padding="same", use_bias=False, name=f"{prefix}_conv{i}")
        x = layer(x)
        layer.set_weights([conv.weight.detach().numpy().transpose(2, 3, 1, 0)])
        norm = keras.layers.BatchNormalization(epsilon=bn.eps, name=f"{prefix}_bn{i}")
        x = norm(x)
        norm.set_weights([t.detach().numpy() for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)])
        x = keras.layers.ReLU(name=f"{prefix}_relu{i}")(x)
    return x


def keras_unet(net):
    """A Keras model computing ``net``'s logits on (batch, y, x, 1) inputs."""
    import keras

    inputs = keras.Input(shape=(None, None, net.encoders[0][0].in_channels), name="raw")
    features = keras_unet_features(keras, net, inputs)
    head = keras.layers.Conv2D(net.head.out_channels, 1, name="head")
    out = head(features)
    head.set_weights([net.head.weight.detach().numpy().transpose(2, 3, 1, 0), net.head.bias.detach().numpy()])
    return keras.Model(inputs, out, name="unet2d")


def keras_unet_features(keras, net, inputs):
    """``net``'s last decoder features (before its 1x1 head) as Keras layers on ``inputs``, with its weights."""
    x, skips = inputs, []
    for i, encoder in enumerate(net.encoders):
        x = _block(keras, x, encoder, f"encoder{i}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = _block(keras, x, net.bottleneck, "bottleneck")
    for i, (up, decoder, skip) in enumerate(zip(net.upsamplers, net.decoders, reversed(skips), strict=True)):
        layer = keras.layers.Conv2DTranspose(up.out_channels, 2, strides=2, name=f"up{i}")
        y = layer(x)
        layer.set_weights([up.weight.detach().numpy().transpose(2, 3, 1, 0), up.bias.detach().numpy()])
        x = _block(keras, keras.layers.Concatenate(axis=-1, name=f"concat{i}")([y, skip]), decoder, f"decoder{i}")
    return x


def save_keras_h5(net, x, path: Path) -> None:
    """Write ``net`` as a Keras HDF5 model at ``path``, after checking its logits on ``x`` (1, 1, y, x)."""
    import torch

    model = keras_unet(net)
    with torch.no_grad():
        expected = net(x).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(model(x.numpy().transpose(0, 2, 3, 1), training=False))
    if not np.abs(got - expected).max() < TOLERANCE:
        raise RuntimeError(f"the Keras UNet differs from the torch UNet by {np.abs(got - expected).max():.2g}")
    model.save(str(path))  # .h5: Keras' legacy HDF5 format, which bioimageio.core's Keras adapter reads
