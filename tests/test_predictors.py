"""Predictors on real demo-zoo packages: padding, tiling, stacks, grey-box dropout."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from bioimage_cte.base.errors import InvalidImageError, InvalidModelError
from bioimage_cte.demozoo.training import normalize
from bioimage_cte.predict.dropout import FeatureDropout
from bioimage_cte.predict.factory import make_predictor
from bioimage_cte.predict.layers import find_perturbation_layer
from bioimage_cte.zoo.models import load_model

pytestmark = pytest.mark.slow  # every test here loads a real package through bioimageio.core and torch


@pytest.fixture(scope="module")
def descr(package):
    return load_model(str(package))


@pytest.fixture(scope="module")
def image(dsb_images):
    return tifffile.imread(dsb_images[0]).astype(np.float32)


@pytest.fixture(scope="module")
def greybox(descr):
    with make_predictor(descr, greybox=True, weight_format="pytorch_state_dict", name="small") as predictor:
        yield predictor


def test_greybox_with_p0_is_bit_identical_to_clean_and_to_blackbox(descr, greybox, image):
    clean = greybox.predict(image)
    with greybox.perturbed(FeatureDropout(0.0, seed=1)):
        p0 = greybox.predict(image)
    with make_predictor(descr, greybox=False, name="small", weight_format="pytorch_state_dict") as blackbox:
        black = blackbox.predict(image)
    assert np.array_equal(clean.foreground, p0.foreground)
    assert np.array_equal(clean.foreground, black.foreground)


def test_greybox_applies_the_models_own_preprocessing_and_sigmoid(descr, greybox, image):
    """Recompute the prediction by hand: reflect-pad by the halo, zero-mean-unit-variance, net, sigmoid."""
    from bioimageio.core.backends.pytorch_backend import load_torch_model

    net = load_torch_model(descr.weights.pytorch_state_dict, devices=["cpu"]).eval()
    padded = np.pad(image, 16, mode="reflect")
    with torch.no_grad():
        logits = net(torch.from_numpy(normalize(padded, method="zero_mean_unit_variance")[None, None]))
    expected = torch.sigmoid(logits).numpy()[0, 0, 16:-16, 16:-16]
    got = greybox.predict(image).foreground
    assert got.min() >= 0 and got.max() <= 1
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_dropout_changes_the_prediction_reproducibly(greybox, image):
    clean = greybox.predict(image).foreground
    with greybox.perturbed(FeatureDropout(0.3, seed=7)):
        a = greybox.predict(image).foreground
    with greybox.perturbed(FeatureDropout(0.3, seed=7)):
        b = greybox.predict(image).foreground
    with greybox.perturbed(FeatureDropout(0.3, seed=8)):
        c = greybox.predict(image).foreground
    assert np.array_equal(a, b)
    assert np.abs(a - clean).mean() > 1e-3
    assert not np.array_equal(a, c)
    assert np.array_equal(greybox.predict(image).foreground, clean)  # the hook is off again


def test_bottleneck_is_found_by_structure(greybox):
    assert greybox.layer == "bottleneck"

    class Net(torch.nn.Module):  # pytorch-3dunet style: the last encoder is the bottleneck
        def __init__(self):
            super().__init__()
            self.encoders = torch.nn.ModuleList([torch.nn.Conv2d(1, 4, 3, padding=1),
                                                 torch.nn.Sequential(torch.nn.MaxPool2d(2),
                                                                     torch.nn.Conv2d(4, 8, 3, padding=1))])
            self.decoder = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(8, 1, 1))

        def forward(self, x):
            return self.decoder(self.encoders[1](self.encoders[0](x)))

    assert find_perturbation_layer(Net()) == "encoders.1"


def test_any_image_size_stack_and_tiling(greybox, image):
    odd = greybox.predict(image[:203, :177])
    assert odd.foreground.shape == (203, 177)
    stack = greybox.predict(np.stack([image[:100, :120], image[100:200, :120]]))
    assert stack.foreground.shape == (2, 100, 120)
    single = greybox.predict(image[:100, :120]).foreground
    np.testing.assert_array_equal(stack.foreground[0], single)
    greybox.max_tile = 128  # force bioimageio.core's blocking with the model's halo
    try:
        tiled = greybox.predict(image).foreground
    finally:
        greybox.max_tile = 1024
    whole = greybox.predict(image).foreground
    assert tiled.shape == whole.shape
    # Halo 16 is smaller than the receptive field of the small UNet, so block seams differ slightly.
    assert np.mean((tiled > 0.5) == (whole > 0.5)) > 0.97


def test_boundary_channel_is_exposed(instance_package, image):
    descr = load_model(str(instance_package))
    with make_predictor(descr, greybox=False, name="instance") as predictor:
        prediction = predictor.predict(image[:128, :128])
    assert prediction.boundary is not None and prediction.boundary.shape == (128, 128)


def test_bad_inputs_name_the_problem(greybox, tmp_path):
    with pytest.raises(InvalidImageError, match="--axes"):
        greybox.predict(np.zeros((2, 3, 64, 64), np.float32))
    with pytest.raises(InvalidModelError, match="not a valid bioimageio RDF"):
        bad = tmp_path / "rdf.yaml"
        bad.write_text("type: model\nformat_version: 0.5.4\nname: broken\n")
        load_model(str(bad))
    with pytest.raises(ValueError, match="0 <= p < 1"):
        FeatureDropout(1.0, seed=0)
