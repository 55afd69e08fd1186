"""Linear CKA: known answers and invariances, and layer-wise CKA on real zoo networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bioimage_cte.predict.images import load_target
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


#: foreground models of three task families in the demo zoo (2D, one input channel, state-dict weights)
FAMILIES = {
    "nuclei": ("nuclei-small-bright", "nuclei-large-sparse", "nuclei-dim-blurry", "nuclei-dense-textured",
               "nuclei-versatile"),
    "em": ("em-organelles", "em-vesicles", "em-organelles-dense", "em-clean-large"),
    "cells": ("cells-brightfield", "cells-lowcontrast", "cells-brightfield-small"),
}


@pytest.mark.slow
def test_zoo_similarity_has_unit_diagonal_and_separates_task_families(nuclei_network, crops, zoo_packages):
    """Bottleneck CKA on the same dsb2018 crops: on average a model is closer to its own family than to the others.

    Not pair by pair: e.g. nuclei-dim-blurry is closer to the cell models (0.40-0.48) than to nuclei-small-bright
    (0.22). The family means (seeded sampling, fixed crops) are pinned.
    """
    by_stem = {p.stem: p for p in zoo_packages}
    names = [n for members in FAMILIES.values() for n in members]
    family = [f for f, members in FAMILIES.items() for _ in members]
    assert nuclei_network.name == names[0]
    # the first model twice: a network compared with itself
    models = [nuclei_network, nuclei_network, *(load_packaged_network(by_stem[n]) for n in names[1:])]
    zoo = zoo_similarity(models, crops)
    full = np.array(zoo["cka"])
    assert zoo["layers"] == ["bottleneck"] * len(models)
    assert np.allclose(full, full.T) and np.allclose(np.diag(full), 1.0) and full[0, 1] == pytest.approx(1.0)
    m = np.delete(np.delete(full, 1, axis=0), 1, axis=1)  # one row and column per model
    assert np.all((m >= 0) & (m <= 1 + 1e-9))

    def mean(pairs) -> float:
        return float(np.mean([m[i, j] for i, j in pairs]))

    n = len(names)
    within = {f: mean([(i, j) for i in range(n) for j in range(i + 1, n) if family[i] == family[j] == f])
              for f in FAMILIES}
    across = {f: mean([(i, j) for i in range(n) for j in range(n) if family[i] == f != family[j]])
              for f in FAMILIES}
    assert within == pytest.approx({"nuclei": 0.312, "em": 0.394, "cells": 0.648}, abs=0.01)
    assert across == pytest.approx({"nuclei": 0.216, "em": 0.282, "cells": 0.304}, abs=0.01)
    for f in FAMILIES:  # the separation: each family is nearer to itself than to the others, by 0.09 or more
        assert within[f] - across[f] > 0.09, (f, within[f], across[f])
    all_within = mean([(i, j) for i in range(n) for j in range(i + 1, n) if family[i] == family[j]])
    all_across = mean([(i, j) for i in range(n) for j in range(i + 1, n) if family[i] != family[j]])
    assert all_within == pytest.approx(0.391, abs=0.01) and all_across == pytest.approx(0.264, abs=0.01)
