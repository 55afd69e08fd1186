"""Hostile and broken input: YAML alias bombs, oversized images, many bad images at once, truncated weights.

Each case must fail fast with one error of the right class naming the file and the limit or fix;
no test here measures time (benchmarks/hostile_input.py does).
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from corpus import _rewrite

from bioimage_cte.base.errors import InvalidImageError, InvalidIndexError, InvalidModelError, UnsafeYamlError
from bioimage_cte.predict.images import ImageCheck, check_images, read_image
from bioimage_cte.zoo.safe_yaml import load_untrusted_yaml

ZOO = Path(__file__).resolve().parents[1] / "resources" / "zoo"
PACKAGE = ZOO / "nuclei-small-bright.zip"


def yaml_bomb(levels: int = 10, width: int = 9) -> str:
    """``levels`` anchors, each a list of ``width`` aliases to the one before: ``width**levels`` nodes expanded."""
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "type: model\n" + "\n".join(lines) + "\n"


def tiff_bomb(path: Path, *, side: int = 40000, tile: int = 512) -> Path:
    """A ~3 MB tiled, zlib-compressed uint16 TIFF declaring ``side`` x ``side`` pixels (3.2 GB decoded).

    Every tile is the same pre-compressed block of zeros, so writing it takes milliseconds.
    """
    block = zlib.compress(np.zeros((tile, tile), np.uint16).tobytes())
    n_tiles = (-(-side // tile)) ** 2
    tifffile.imwrite(path, (block for _ in range(n_tiles)), shape=(side, side), dtype=np.uint16,
                     tile=(tile, tile), compression="zlib")
    return path


def png_bomb(path: Path, *, side: int = 100000) -> Path:
    """A PNG whose IHDR declares ``side`` x ``side`` RGBA pixels and that holds no pixel data at all."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def npy_bomb(path: Path, *, side: int = 50000) -> Path:
    """A .npy whose header declares ``side`` x ``side`` float64 values and that holds none of them."""
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (side, side)})
    return path


# --- YAML ------------------------------------------------------------------------------------------------------


def test_alias_bomb_is_refused():
    with pytest.raises(UnsafeYamlError) as info:
        load_untrusted_yaml(yaml_bomb(), where="rdf.yaml of bomb.zip")
    message = str(info.value)
    assert message.startswith("rdf.yaml of bomb.zip expands to more than 100000 YAML nodes (limit 100000)")
    assert "\n" not in message and "fix or remove the package" in message


def test_too_many_aliases_are_refused():
    text = "base: &b 1\n" + "".join(f"k{i}: *b\n" for i in range(150))
    with pytest.raises(UnsafeYamlError, match=r"^rdf\.yaml of m uses 101 YAML aliases \(limit 100\)"):
        load_untrusted_yaml(text, where="rdf.yaml of m")


def test_self_containing_alias_is_refused():
    with pytest.raises(UnsafeYamlError, match="rdf.yaml of m has a YAML alias inside the collection it names"):
        load_untrusted_yaml("a: &a [1, *a]\n", where="rdf.yaml of m")


@pytest.mark.parametrize("as_bytes", [False, True])
def test_oversized_yaml_is_refused(as_bytes):
    text = "description: " + "x" * 2000 + "\n"
    with pytest.raises(UnsafeYamlError, match=r"^big/rdf\.yaml is over the size limit of 1000 bytes"):
        load_untrusted_yaml(text.encode() if as_bytes else text, where="big/rdf.yaml", max_bytes=1000)


def test_normal_yaml_with_anchors_loads_as_before():
    from ruyaml import YAML

    text = ("type: model\nauthors: [&me {name: A}]\nmaintainers: [*me]\nthreshold: 1e-6\nflag: no\n"
            "axes: &ax [{id: y}, {id: x}]\noutputs: [{axes: *ax}]\n")
    data = load_untrusted_yaml(text, where="rdf.yaml")
    assert data == YAML(typ="safe").load(text)
    assert data["threshold"] == 1e-6 and data["flag"] == "no"  # YAML 1.2, as bioimageio.spec reads it
    with zipfile.ZipFile(PACKAGE) as zf:
        raw = zf.read("rdf.yaml")
    assert load_untrusted_yaml(raw, where="rdf.yaml") == YAML(typ="safe").load(raw.decode())


@pytest.fixture(scope="module")
def bomb_package(tmp_path_factory) -> Path:
    return _rewrite(PACKAGE, tmp_path_factory.mktemp("bomb") / "bomb.zip", rdf_text=yaml_bomb())


def test_load_model_refuses_a_bomb_before_bioimageio_parses_it(bomb_package, monkeypatch):
    import bioimageio.spec

    from bioimage_cte.zoo.models import load_model

    def never(*args, **kwargs):
        raise AssertionError("bioimageio.spec was handed the alias bomb")

    monkeypatch.setattr(bioimageio.spec, "load_description", never)
    with pytest.raises(UnsafeYamlError) as info:
        load_model(str(bomb_package))
    assert isinstance(info.value, InvalidModelError)  # reported like any other broken package
    assert str(info.value).startswith(f"rdf.yaml of {bomb_package} expands to more than 100000 YAML nodes "
                                      "(limit 100000)")


def test_tags_fingerprint_and_annotation_survive_a_bomb(bomb_package):
    from bioimage_cte.outputs.annotate import read_rdf
    from bioimage_cte.run.store import _rdf_fingerprint
    from bioimage_cte.zoo.sources import ModelSource, read_tags

    source = ModelSource("bomb", str(bomb_package), kind="zip", location=str(bomb_package))
    assert read_tags(source) == []
    raw = yaml_bomb().encode()
    assert _rdf_fingerprint(raw) == raw  # fingerprinted by its bytes, as an unreadable RDF is
    where = re.escape(f"{bomb_package}:rdf.yaml")
    with pytest.raises(UnsafeYamlError, match=rf"^{where} expands to more than 100000 YAML nodes \(limit 100000\)"):
        read_rdf(bomb_package)


def test_sources_walk_visits_shared_data_once():
    from bioimage_cte.zoo.rdf_checks import rdf_sources as _sources

    node: object = [{"source": "weights.pt"}]
    for _ in range(40):  # 2**40 paths through the same objects
        node = [node, node]
    loop: dict = {"weights": {"source": "w.pt"}}
    loop["self"] = loop
    assert len(list(_sources({"a": node}, ()))) == 1
    assert list(_sources(loop, ())) == [("weights.source", "w.pt")]


def test_collection_index_over_the_limit_or_too_deep_is_refused(tmp_path):
    from bioimage_cte.zoo.sources import read_collection_index

    index = tmp_path / "index.json"
    index.write_text(json.dumps({"items": [{"id": "x", "type": "model", "versions": []}] * 20}))
    expected = re.escape(f"collection index {index} is over the size limit of 100 bytes")
    with pytest.raises(InvalidIndexError, match=f"^{expected}"):
        read_collection_index(index, max_bytes=100)
    index.write_text("[" * 200_000)
    with pytest.raises(InvalidIndexError, match="nests JSON arrays or objects too deeply"):
        read_collection_index(index)


# --- images ----------------------------------------------------------------------------------------------------


def test_tiff_bomb_is_refused_from_its_header(tmp_path):
    path = tiff_bomb(tmp_path / "huge.tif")
    assert path.stat().st_size < 5_000_000
    with pytest.raises(InvalidImageError) as info:
        read_image(path)
    assert str(info.value) == (f"image {path} has 1600000000 pixel values (shape (40000, 40000), 3.2 GB decoded), "
                               "above the limit of 1073741824; crop it, or raise the limit (--max-pixels, max_pixels) "
                               "if you have the memory")


@pytest.mark.parametrize(("make", "size"), [(png_bomb, "40.0 GB"), (npy_bomb, "20.0 GB")])
def test_png_and_npy_bombs_are_refused_from_their_header(tmp_path, make, size):
    path = make(tmp_path / ("huge.png" if make is png_bomb else "huge.npy"))
    name = re.escape(str(path))
    with pytest.raises(InvalidImageError, match=rf"^image {name} has \d+ pixel values \(shape .*, {size} decoded\), "
                                                r"above the limit of 1073741824; crop it, or raise the limit "
                                                r"\(--max-pixels, max_pixels\) if you have the memory$"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
def test_max_pixels_counts_the_decoded_values(tmp_path, suffix):
    import imageio.v3 as iio

    path = tmp_path / f"a{suffix}"
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 251
    data = data.astype(np.uint8) if suffix == ".png" else data
    {".tif": tifffile.imwrite, ".png": iio.imwrite, ".npy": np.save}[suffix](path, data)
    assert read_image(path, max_pixels=data.size).shape == (64, 64)
    assert read_image(path, max_pixels=None).shape == (64, 64)
    with pytest.raises(InvalidImageError, match=rf"^image {re.escape(str(path))} has 4096 pixel values .*max_pixels"):
        read_image(path, max_pixels=data.size - 1)


@pytest.fixture
def mixed(tmp_path) -> list[Path]:
    tifffile.imwrite(tmp_path / "a-good.tif", np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32))
    (tmp_path / "b-noise.tif").write_bytes(np.random.default_rng(1).bytes(512))
    (tmp_path / "c-empty.npy").write_bytes(b"")
    np.save(tmp_path / "d-good.npy", np.arange(64, dtype=np.uint8).reshape(8, 8))
    tiff_bomb(tmp_path / "e-huge.tif")
    return sorted(tmp_path.iterdir())


def test_every_unreadable_image_is_listed_in_one_error(mixed):
    with pytest.raises(InvalidImageError) as info:
        check_images(mixed)
    first, *lines = str(info.value).splitlines()
    assert first == ("3 of 5 images cannot be read; fix or remove them (or skip them with --skip-bad-images, "
                     "skip_bad=True):")
    assert len(lines) == 3
    assert f"cannot read image {mixed[1]} (TiffFileError" in lines[0]
    assert f"image {mixed[2]} is an empty file (0 bytes)" in lines[1]
    assert f"image {mixed[4]} has 1600000000 pixel values" in lines[2]


def test_one_unreadable_image_keeps_its_own_one_line_error(mixed):
    name = re.escape(str(mixed[1]))
    with pytest.raises(InvalidImageError, match=rf"^cannot read image {name} \(TiffFileError[^\n]*$"):
        check_images(mixed[:2])


def test_skip_bad_returns_the_readable_images(mixed):
    check = check_images(mixed, skip_bad=True)
    assert isinstance(check, ImageCheck)
    assert check.paths == (mixed[0], mixed[3])
    assert [p for p, _ in check.skipped] == [mixed[1], mixed[2], mixed[4]]
    assert all(str(p) in reason and "\n" not in reason for p, reason in check.skipped)
    assert check.warnings == ()


# --- weights ---------------------------------------------------------------------------------------------------


def _truncated_state_dict() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(64, 64)}, buffer)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_truncated_weights_are_named_corrupt_and_refused_pickles_are_not():
    import torch

    from bioimage_cte.zoo.models import _damaged_weights

    def as_bioimageio_raises(blob: bytes) -> Exception:
        try:
            try:
                torch.load(io.BytesIO(blob), weights_only=True)
            except Exception as e:  # bioimageio.core's wrapping of every torch.load failure
                raise ValueError(f"Failed to load weights with `weights_only=True`: {e}") from e
        except ValueError as wrapped:
            return wrapped
        raise AssertionError("torch.load accepted the file")

    assert _damaged_weights(as_bioimageio_raises(_truncated_state_dict())) is not None
    assert "PytorchStreamReader failed" in _damaged_weights(as_bioimageio_raises(_truncated_state_dict()[:200]))
    evil = io.BytesIO()
    torch.save({"hook": zipfile.ZipInfo("x")}, evil)  # a whole file with a global weights_only refuses
    assert _damaged_weights(as_bioimageio_raises(evil.getvalue())) is None


@pytest.mark.slow
def test_truncated_weights_package_is_reported_corrupt(tmp_path):
    from bioimage_cte.predict.factory import make_predictor
    from bioimage_cte.zoo.models import load_model

    with zipfile.ZipFile(PACKAGE) as zf:
        weights = zf.read("weights.pt")
    package = _rewrite(PACKAGE, tmp_path / "cut.zip", files={"weights.pt": weights[: len(weights) // 2]})
    descr = load_model(str(package))  # the sha256 in rdf.yaml matches the cut file: only the cut is wrong
    with pytest.raises(InvalidModelError) as info:
        make_predictor(descr, greybox=True, weight_format="pytorch_state_dict", name=str(package))
    message = str(info.value)
    assert message.startswith(f"{package}: weights file weights.pt is corrupt or truncated (")
    assert message.endswith("; download the package again") and "plain state dict" not in message
