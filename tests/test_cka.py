"""Linear CKA: known answers and invariances, and layer-wise CKA on real zoo networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioimage_cte.images import list_images, load_target
from bioimage_cte.studies.cka import (
    cka_matrix,
    default_layers,
    feature_maps,
    layerwise_cka,
    linear_cka,
    sample_positions,
)
from bioimage_cte.studies.finetune import load_packaged_network, prepare_input, zoo_similarity

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12))  # correlated features, like a conv layer's


def test_cka_of_features_with_themselves_is_one(features):
    assert linear_cka(features, features) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_rotation_and_isotropic_scaling(features):
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
    assert linear_cka(features, features @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(features, 7.5 * features @ q + 3.0) == pytest.approx(1.0, abs=1e-10)
    other = np.random.default_rng(2).normal(size=(500, 6))
    assert linear_cka(features @ q, other) == pytest.approx(linear_cka(features, other), abs=1e-10)


def test_cka_is_not_invariant_to_non_isotropic_scaling(features):
    scale = np.diag(np.linspace(0.1, 10, 12))
    assert linear_cka(features, features @ scale) < 0.99


def test_cka_of_independent_random_features_is_low():
    rng = np.random.default_rng(3)
    assert linear_cka(rng.normal(size=(4000, 16)), rng.normal(size=(4000, 16))) < 0.02


def test_cka_rejects_different_samples_and_gives_nan_for_constant_features(features):
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(features, features[:-1])
    assert np.isnan(linear_cka(features, np.ones((500, 3))))


def test_cka_matrix_is_symmetric_with_unit_diagonal(features):
    m = cka_matrix([features, features[:, :6], np.random.default_rng(4).normal(size=(500, 5))])
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)


def test_sample_positions_is_seeded():
    assert np.array_equal(sample_positions(1000, 50, rng=5), sample_positions(1000, 50, rng=5))
    assert not np.array_equal(sample_positions(1000, 50, rng=5), sample_positions(1000, 50, rng=6))


@pytest.fixture(scope="module")
def nuclei_network(package):
    return load_packaged_network(package)


@pytest.fixture(scope="module")
def crops(dsb_images) -> list[np.ndarray]:
    return [load_target(p)[:128, :128] for p in dsb_images[:2]]


@pytest.mark.slow
def test_layerwise_cka_of_a_network_with_itself_is_one(nuclei_network, crops):
    prepare = lambda im: prepare_input(nuclei_network, im)  # noqa: E731
    layers = default_layers(nuclei_network.net)
    assert layers[:4] == ["encoders.0", "encoders.1", "encoders.2", "bottleneck"] and layers[-1] == "head"
    cka = layerwise_cka(nuclei_network.net, nuclei_network.net, crops, n_samples=2000, prepare=prepare)
    assert list(cka) == layers
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in cka.values())


@pytest.mark.slow
def test_feature_maps_pools_to_a_common_grid(nuclei_network, crops):
    maps = feature_maps(nuclei_network.net, crops, ["bottleneck", "encoders.0"], grid=(4, 4), n_samples=None,
                        prepare=lambda im: prepare_input(nuclei_network, im))
    assert maps["bottleneck"].shape == (2 * 16, 64) and maps["encoders.0"].shape == (2 * 16, 8)
    with pytest.raises(ValueError, match="not modules"):
        feature_maps(nuclei_network.net, crops, ["nope"])


@pytest.mark.slow
def test_zoo_similarity_has_unit_diagonal_and_separates_task_families(nuclei_network, crops, zoo_packages):
    em = load_packaged_network(next(p for p in zoo_packages if p.stem == "em-organelles"))
    dsb = list_images(str(crops and zoo_packages[0].parents[1] / "data" / "dsb2018" / "images"))
    zoo = zoo_similarity([nuclei_network, nuclei_network, em], [load_target(p)[:128, :128] for p in dsb[:2]])
    m = np.array(zoo["cka"])
    assert zoo["layers"] == ["bottleneck"] * 3
    assert np.allclose(np.diag(m), 1.0) and m[0, 1] == pytest.approx(1.0)
    assert 0.0 <= m[0, 2] < 1.0
