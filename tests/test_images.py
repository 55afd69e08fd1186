"""Tests for bioimage_cte.predict.images on real files written to a temp folder."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from bioimage_cte.base.errors import BioimageCteError, InvalidImageError
from bioimage_cte.predict.images import check_images, list_images, load_labels, load_target, read_image, to_yx

RNG = np.random.default_rng(0)


def _write(path: Path, data: np.ndarray) -> Path:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, data)
    elif suffix == ".png":
        iio.imwrite(path, data)
    else:
        tifffile.imwrite(path, data)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    _write(d / "c.tif", RNG.integers(0, 4000, (32, 40), dtype=np.uint16))
    _write(d / "a.png", RNG.integers(0, 255, (32, 40), dtype=np.uint8))
    _write(d / "b.npy", RNG.random((32, 40)).astype(np.float32))
    _write(d / "d.TIFF", RNG.integers(0, 255, (32, 40), dtype=np.uint8))
    (d / "notes.txt").write_text("not an image")
    (d / "._a.tif").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (d / "sub").mkdir()
    _write(d / "sub" / "deep.tif", np.ones((8, 8), dtype=np.uint8))
    return d


# --- listing ---------------------------------------------------------------------------------------


def test_list_folder(folder: Path) -> None:
    assert [p.name for p in list_images(folder)] == ["a.png", "b.npy", "c.tif", "d.TIFF"]


def test_list_glob(folder: Path) -> None:
    assert [p.name for p in list_images(str(folder / "*.tif"))] == ["c.tif"]
    assert [p.name for p in list_images(f"{folder}/[ab].*")] == ["a.png", "b.npy"]
    assert [p.name for p in list_images(f"{folder}/*")] == ["a.png", "b.npy", "c.tif", "d.TIFF"]


def test_list_single_file(folder: Path) -> None:
    assert list_images(folder / "b.npy") == [folder / "b.npy"]
    assert list_images(str(folder / "b.npy")) == [folder / "b.npy"]


def test_existing_path_with_glob_characters(tmp_path: Path) -> None:
    path = _write(tmp_path / "img[1].npy", np.ones((4, 4)))
    assert list_images(path) == [path]


@pytest.mark.parametrize("spec", ["empty", "empty/*.tif", "missing.tif"])
def test_list_nothing(tmp_path: Path, spec: str) -> None:
    (tmp_path / "empty").mkdir()
    target = str(tmp_path / spec)
    with pytest.raises(InvalidImageError) as info:
        list_images(target)
    message = str(info.value)
    assert target in message
    assert ".tif" in message and "glob" in message
    assert "\n" not in message


def test_list_unsupported_file(folder: Path) -> None:
    with pytest.raises(InvalidImageError, match="notes.txt"):
        list_images(folder / "notes.txt")


# --- reading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("x.tif", RNG.integers(0, 65535, (3, 17, 19), dtype=np.uint16)),
        ("x.tiff", RNG.random((17, 19)).astype(np.float32)),
        ("x.png", RNG.integers(0, 255, (17, 19), dtype=np.uint8)),
        ("x.png", RNG.integers(0, 255, (17, 19, 3), dtype=np.uint8)),
        ("x.npy", RNG.random((2, 17, 19))),
        ("x.npy", RNG.random((17, 19)) > 0.5),
    ],
)
def test_round_trip(tmp_path: Path, name: str, data: np.ndarray) -> None:
    out = read_image(_write(tmp_path / name, data))
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)


def test_unreadable_tif(tmp_path: Path) -> None:
    path = tmp_path / "broken.tif"
    path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(InvalidImageError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["broken.png", "broken.npy"])
def test_unreadable_other(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(InvalidImageError, match=name):
        read_image(path)


def test_pickled_npy_refused(tmp_path: Path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidImageError, match="obj.npy"):
        read_image(path)


def test_empty_array(tmp_path: Path) -> None:
    path = _write(tmp_path / "e.npy", np.zeros((0, 5)))
    with pytest.raises(InvalidImageError, match="empty"):
        read_image(path)


def test_complex_dtype(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.npy", np.ones((4, 4), dtype=np.complex64))
    with pytest.raises(InvalidImageError, match="dtype"):
        read_image(path)


# --- axes ------------------------------------------------------------------------------------------


def test_yx_float32() -> None:
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    out = to_yx(data)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("shape", [(1, 20, 30), (20, 30, 1), (1, 1, 20, 30)])
def test_singletons_dropped(shape: tuple[int, ...]) -> None:
    assert to_yx(np.ones(shape)).shape == (20, 30)


def test_rgb_and_rgba_to_grey() -> None:
    rgb = np.stack([np.full((20, 30), v, np.uint8) for v in (30, 60, 90)], axis=-1)
    np.testing.assert_allclose(to_yx(rgb), 60.0)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_allclose(to_yx(rgba), 60.0)
    np.testing.assert_allclose(to_yx(rgb, axes="yxc"), 60.0)


def test_zyx_guessed() -> None:
    stack = RNG.random((6, 20, 30))
    out = to_yx(stack)
    assert out.shape == (6, 20, 30)
    np.testing.assert_allclose(out, stack.astype(np.float32))


def test_explicit_cyx_averages_channels() -> None:
    data = np.stack([np.zeros((20, 30)), np.full((20, 30), 4.0)])
    np.testing.assert_allclose(to_yx(data, axes="cyx"), 2.0)


def test_explicit_axes_reorder() -> None:
    data = RNG.random((20, 30, 3))  # y, x, z
    out = to_yx(data, axes="yxz")
    assert out.shape == (3, 20, 30)
    np.testing.assert_allclose(out[1], data[..., 1].astype(np.float32))
    assert to_yx(RNG.random((2, 5, 20, 30)), axes="czyx").shape == (5, 20, 30)
    assert to_yx(np.ones((1, 20, 30)), axes="ZYX").shape == (20, 30)


@pytest.mark.parametrize("shape", [(3, 20, 30), (2, 20, 30), (20, 30, 5), (30, 8, 9), (2, 3, 20, 30)])
def test_ambiguous_shape_asks_for_axes(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "amb.npy"
    with pytest.raises(InvalidImageError) as info:
        to_yx(np.ones(shape), path=path)
    message = str(info.value)
    assert "--axes" in message
    assert str(path) in message
    assert str(shape) in message


@pytest.mark.parametrize("axes", ["yxq", "yyx", "zcx", "yx"])
def test_bad_axes(axes: str) -> None:
    with pytest.raises(InvalidImageError, match="axes"):
        to_yx(np.ones((3, 20, 30)), axes=axes)


def test_one_dimensional() -> None:
    with pytest.raises(InvalidImageError, match="--axes"):
        to_yx(np.ones((1, 30)))


def test_constant_allowed_nan_refused(tmp_path: Path) -> None:
    np.testing.assert_array_equal(to_yx(np.zeros((8, 8))), 0.0)
    data = np.ones((8, 8))
    data[2, 3] = np.nan
    path = _write(tmp_path / "nan.tif", data.astype(np.float32))
    with pytest.raises(InvalidImageError, match="NaN") as info:
        load_target(path)
    assert str(path) in str(info.value)
    with pytest.raises(InvalidImageError, match="NaN"):
        to_yx(np.full((8, 8), np.inf))


# --- loading one target image -----------------------------------------------------------------------


def test_load_target(folder: Path) -> None:
    paths = list_images(folder)
    loaded = [load_target(p) for p in paths]
    assert all(data.dtype == np.float32 and data.shape == (32, 40) for data in loaded)
    np.testing.assert_array_equal(loaded[2], tifffile.imread(folder / "c.tif").astype(np.float32))


def test_load_target_with_axes(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.tif", RNG.integers(0, 255, (3, 20, 30), dtype=np.uint8))
    assert load_target(path, axes="zyx").shape == (3, 20, 30)
    with pytest.raises(InvalidImageError, match="axes"):
        load_target(path, axes="qyx")


def test_check_images_warns_about_constant_images_only(tmp_path: Path) -> None:
    flat = _write(tmp_path / "flat.npy", np.full((8, 8), 3, dtype=np.uint8))
    busy = _write(tmp_path / "busy.npy", RNG.random((8, 8)))
    check = check_images([flat, busy])
    [warning] = check.warnings
    assert str(flat) in warning and "constant" in warning
    assert check.paths == (flat, busy) and check.skipped == ()
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"garbage")
    with pytest.raises(InvalidImageError, match="broken.npy"):
        check_images([busy, broken])


# --- labels ----------------------------------------------------------------------------------------


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[list[Path], Path]:
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    _write(images / "img1.tif", RNG.integers(0, 255, (20, 30), dtype=np.uint8))
    _write(images / "img2.png", RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    _write(labels / "img1.png", np.eye(20, 30, dtype=np.uint8))
    _write(labels / "img2.npy", np.arange(600, dtype=np.int32).reshape(1, 20, 30))
    return list_images(images), labels


def test_load_labels(labelled: tuple[list[Path], Path]) -> None:
    paths, labels_dir = labelled
    labels = load_labels(paths, labels_dir)
    assert [lab.shape for lab in labels] == [(20, 30), (20, 30)]
    assert labels[0].dtype == np.uint8 and labels[1].dtype == np.int32
    np.testing.assert_array_equal(labels[0], np.eye(20, 30, dtype=np.uint8))


def test_missing_label(labelled: tuple[list[Path], Path]) -> None:
    paths, labels_dir = labelled
    (labels_dir / "img2.npy").unlink()
    with pytest.raises(InvalidImageError) as info:
        load_labels(paths, str(labels_dir))
    assert str(paths[1]) in str(info.value)
    assert str(labels_dir) in str(info.value)


def test_label_shape_mismatch(labelled: tuple[list[Path], Path]) -> None:
    paths, labels_dir = labelled
    _write(labels_dir / "img1.png", np.zeros((20, 31), dtype=np.uint8))
    with pytest.raises(InvalidImageError) as info:
        load_labels(paths, labels_dir)
    message = str(info.value)
    assert "(20, 31)" in message and "(20, 30)" in message
    assert "img1.png" in message


def test_two_candidate_labels(labelled: tuple[list[Path], Path]) -> None:
    paths, labels_dir = labelled
    _write(labels_dir / "img1.tif", np.zeros((20, 30), dtype=np.uint8))
    with pytest.raises(InvalidImageError, match="img1.png, img1.tif"):
        load_labels(paths, labels_dir)


def test_labels_folder_missing(labelled: tuple[list[Path], Path], tmp_path: Path) -> None:
    paths, _ = labelled
    with pytest.raises(InvalidImageError, match="nolabels"):
        load_labels(paths, tmp_path / "nolabels")


def test_error_root() -> None:
    with pytest.raises(BioimageCteError):
        list_images("/definitely/not/here/*.tif")
