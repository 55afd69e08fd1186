"""Tests for bioimage_cte.zoo.sources on real bioimageio packages built offline in a temp folder."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bioimage_cte.base.errors import (
    BioimageCteError,
    InvalidIndexError,
    InvalidModelError,
    UnsafeArchiveError,
)
from bioimage_cte.zoo.sources import (
    ModelSource,
    check_zip,
    find_models,
    read_collection_index,
    safe_extract_zip,
)


def _build_package(work: Path, name: str) -> object:
    """A valid 0.5 ModelDescr of a 3x3 conv net with torchscript weights only."""
    import imageio.v3 as iio
    import torch
    from bioimageio.spec.model.v0_5 import (
        Author,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    work.mkdir(parents=True)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.jit.trace(net, x).save(str(work / "weights_torchscript.pt"))
        y = net(x)
    np.save(work / "test_input.npy", x.numpy())
    np.save(work / "test_output.npy", y.numpy())
    iio.imwrite(work / "cover.png", np.full((64, 128), 128, dtype=np.uint8))
    (work / "README.md").write_text(f"# {name}\n\n## Validation\n\nTest fixture.\n")

    def space(axis: str) -> SpaceInputAxis:
        return SpaceInputAxis(id=AxisId(axis), size=ParameterizedSize(min=16, step=8))

    def out_space(axis: str) -> SpaceOutputAxis:
        return SpaceOutputAxis(
            id=AxisId(axis), size=SizeReference(tensor_id=TensorId("raw"), axis_id=AxisId(axis))
        )

    # no github_user on the author: it would make bioimageio query api.github.com
    return ModelDescr(
        name=name,
        description="One 3x3 convolution, a test fixture for bioimage-cte.",
        authors=[Author(name="Test Author", affiliation="Test Lab")],
        cite=[CiteEntry(text="Test fixture", doi="10.1007/978-3-319-24574-4_28")],
        license=LicenseId("MIT"),
        documentation=FileDescr(source=work / "README.md"),
        covers=[FileDescr(source=work / "cover.png")],
        tags=["segmentation", "2d", "test"],
        inputs=[
            InputTensorDescr(
                id=TensorId("raw"),
                axes=[BatchAxis(), ChannelAxis(channel_names=[Identifier("raw")]), space("y"), space("x")],
                test_tensor=FileDescr(source=work / "test_input.npy"),
                data=IntervalOrRatioDataDescr(type="float32"),
            )
        ],
        outputs=[
            OutputTensorDescr(
                id=TensorId("mask"),
                axes=[
                    BatchAxis(),
                    ChannelAxis(channel_names=[Identifier("foreground")]),
                    out_space("y"),
                    out_space("x"),
                ],
                test_tensor=FileDescr(source=work / "test_output.npy"),
                data=IntervalOrRatioDataDescr(type="float32"),
            )
        ],
        weights=WeightsDescr(
            torchscript=TorchscriptWeightsDescr(
                source=work / "weights_torchscript.pt", pytorch_version=Version(torch.__version__)
            )
        ),
    )


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two package folders (alpha, beta) and one zip package (gamma)."""
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    root = tmp_path_factory.mktemp("zoo")
    work = tmp_path_factory.mktemp("build")
    packages = root / "packages"
    packages.mkdir()
    for name in ("beta", "alpha"):
        descr = _build_package(work / name, f"Conv {name}")
        save_bioimageio_package_as_folder(descr, output_path=packages / name)
    descr = _build_package(work / "gamma", "Conv gamma")
    save_bioimageio_package(descr, output_path=packages / "gamma.zip")
    return packages


@pytest.fixture
def packages(zoo: Path, tmp_path: Path) -> Path:
    """A private copy of the zoo, so a test may add files to it."""
    return Path(shutil.copytree(zoo, tmp_path / "packages"))


def _zip(path: Path, entries: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


# --- find_models: each kind of spec ----------------------------------------------------------------


def test_rdf_file(zoo: Path) -> None:
    rdf = zoo / "alpha" / "rdf.yaml"
    [src] = find_models([rdf])
    assert src == ModelSource(name="alpha", source=str(rdf), kind="rdf", location=str(rdf.resolve()))


def test_package_folder(zoo: Path) -> None:
    [src] = find_models([str(zoo / "beta")])
    assert (src.name, src.kind, src.source) == ("beta", "folder", str(zoo / "beta"))
    assert src.location == str((zoo / "beta" / "rdf.yaml").resolve())


def test_bioimageio_yaml_name(packages: Path) -> None:
    (packages / "alpha" / "rdf.yaml").rename(packages / "alpha" / "bioimageio.yaml")
    [src] = find_models([packages / "alpha"])
    assert Path(src.location).name == "bioimageio.yaml"


def test_zip_package(zoo: Path) -> None:
    [src] = find_models([zoo / "gamma.zip"])
    assert (src.name, src.kind, src.location) == ("gamma", "zip", str((zoo / "gamma.zip").resolve()))


def test_zip_extract_dir(zoo: Path, tmp_path: Path) -> None:
    [src] = find_models([zoo / "gamma.zip"], extract_dir=tmp_path / "x")
    location = Path(src.location)
    assert src.kind == "zip"
    assert location.name == "rdf.yaml"
    assert location.is_relative_to((tmp_path / "x").resolve())
    assert (location.parent / "weights_torchscript.pt").is_file()


def test_folder_of_packages_sorted(zoo: Path) -> None:
    sources = find_models([zoo])
    assert [(s.name, s.kind) for s in sources] == [("alpha", "folder"), ("beta", "folder"), ("gamma", "zip")]


def test_urls_pass_through() -> None:
    urls = ["https://example.org/models/unet/rdf.yaml", "http://example.org/pkgs/unet.zip"]
    sources = find_models(urls)
    assert [(s.kind, s.location, s.source) for s in sources] == [("url", u, u) for u in urls]
    assert sources[0].name == "unet"


def test_duplicates_kept_once(zoo: Path) -> None:
    sources = find_models([zoo / "alpha", zoo / "alpha" / "rdf.yaml", zoo])
    assert [s.name for s in sources] == ["alpha", "beta", "gamma"]
    assert sources[0].kind == "folder"


def test_single_path_not_a_list(zoo: Path) -> None:
    with pytest.raises(InvalidModelError, match="list"):
        find_models(zoo)  # type: ignore[arg-type]


# --- collection indexes ----------------------------------------------------------------------------


def _check_loads(sources: list[ModelSource]) -> None:
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    for src in sources:
        descr = load_description(src.location, perform_io_checks=False)
        assert isinstance(descr, ModelDescr), (src, descr.validation_summary.format())


@pytest.mark.slow  # loads every listed package with bioimageio.spec
def test_current_index_local(zoo: Path, tmp_path: Path) -> None:
    index = {
        "items": [
            {
                "id": "bioimage-io/alpha-model",
                "type": "model",
                "versions": [
                    {"version": "1", "source": "nowhere/old/rdf.yaml", "sha256": "0"},
                    {"version": "2", "source": str(zoo / "alpha" / "rdf.yaml"), "sha256": "0"},
                ],
            },
            {"id": "some-dataset", "type": "dataset", "versions": [{"version": "1", "source": "d.yaml"}]},
            # a relative source resolves against the index's folder
            {
                "id": "gamma-model",
                "type": "model",
                "versions": [{"version": "1", "source": "pkgs/gamma.zip"}],
            },
        ],
        "total": 3,
    }
    (tmp_path / "pkgs").symlink_to(zoo)
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index))
    sources = find_models([path])
    assert [(s.name, s.kind) for s in sources] == [("alpha-model", "index"), ("gamma-model", "index")]
    assert sources[0].location == str((zoo / "alpha" / "rdf.yaml").resolve())
    assert sources[1].source == "pkgs/gamma.zip"
    assert Path(sources[1].location).resolve() == (zoo / "gamma.zip").resolve()
    _check_loads(sources)


@pytest.mark.slow  # loads every listed package with bioimageio.spec
def test_legacy_index_local(zoo: Path, tmp_path: Path) -> None:
    index = {
        "collection": [
            {"id": "10.5281/zenodo.1", "nickname": "able-alpha", "type": "model", "rdf_source": "../alpha"},
            {"id": "beta", "type": "model", "rdf_source": str(zoo / "beta" / "rdf.yaml")},
            {"id": "app", "type": "application", "rdf_source": "app.yaml"},
        ]
    }
    (tmp_path / "idx").mkdir()
    shutil.copytree(zoo / "alpha", tmp_path / "alpha")
    path = tmp_path / "idx" / "collection.json"
    path.write_text(json.dumps(index))
    sources = read_collection_index(str(path))
    assert [s.name for s in sources] == ["able-alpha", "beta"]
    assert sources[0].location == str((tmp_path / "alpha" / "rdf.yaml").resolve())
    _check_loads(sources)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"models": []}),
        json.dumps({"items": [{"id": "a", "type": "model", "versions": []}]}),
        json.dumps({"items": [{"id": "a", "type": "model", "versions": [{"version": "1"}]}]}),
        json.dumps({"items": ["just a string"]}),
        json.dumps({"collection": [{"id": "a", "type": "model"}]}),
        json.dumps({"collection": [{"type": "model", "rdf_source": "x/rdf.yaml"}]}),
    ],
)
def test_bad_index(tmp_path: Path, content: str) -> None:
    path = tmp_path / "index.json"
    path.write_text(content)
    with pytest.raises(InvalidIndexError) as info:
        find_models([path])
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(InvalidIndexError, match="index.json"):
        read_collection_index(tmp_path / "index.json")


# --- zip safety ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "symlink", "offending"),
    [
        ({"rdf.yaml": b"x", "../evil.txt": b"x"}, None, "../evil.txt"),
        ({"rdf.yaml": b"x", "weights/../../evil.txt": b"x"}, None, "weights/../../evil.txt"),
        ({"rdf.yaml": b"x", "/tmp/evil.txt": b"x"}, None, "/tmp/evil.txt"),
        ({"rdf.yaml": b"x", "C:/evil.txt": b"x"}, None, "C:/evil.txt"),
        ({"rdf.yaml": b"x", "..\\evil.txt": b"x"}, None, "..\\\\evil.txt"),
        ({"rdf.yaml": b"x"}, "link", "link"),
        ({"rdf.yaml": b"x", "big.bin": b"0" * 2000}, None, "big.bin"),
    ],
)
def test_unsafe_zip(tmp_path: Path, entries: dict[str, bytes], symlink: str | None, offending: str) -> None:
    path = _zip(tmp_path / "bad.zip", entries, symlink=symlink)
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError) as info:
        check_zip(path, max_entry_bytes=1000)
    assert str(path) in str(info.value)
    assert offending in str(info.value)
    if "big.bin" not in entries:
        with pytest.raises(UnsafeArchiveError):
            safe_extract_zip(path, dest)
        with pytest.raises(UnsafeArchiveError):
            find_models([path])
        assert not dest.exists() or not any(dest.iterdir())
    assert not (tmp_path / "evil.txt").exists()


def test_total_size_limit(tmp_path: Path) -> None:
    path = _zip(tmp_path / "m.zip", {"rdf.yaml": b"x", "a.bin": b"0" * 600, "b.bin": b"0" * 600})
    check_zip(path, max_total_bytes=2000)
    with pytest.raises(UnsafeArchiveError, match="b.bin"):
        check_zip(path, max_total_bytes=1000)


def test_zip_without_rdf(tmp_path: Path) -> None:
    path = _zip(tmp_path / "m.zip", {"model/rdf.yaml": b"x", "README.md": b"x"})
    with pytest.raises(InvalidModelError, match="rdf.yaml") as info:
        check_zip(path)
    assert not isinstance(info.value, UnsafeArchiveError)
    assert str(path) in str(info.value)


def test_corrupt_zip(tmp_path: Path) -> None:
    path = tmp_path / "broken.zip"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InvalidModelError, match="not a valid zip") as info:
        find_models([path])
    assert str(path) in str(info.value)


def test_corrupt_zip_in_folder_of_packages_is_one_failure_at_load(packages: Path) -> None:
    from bioimage_cte.zoo.models import load_model

    (packages / "zz.zip").write_bytes(b"PK not really")
    sources = find_models([packages])
    assert sources[-1].name == "zz"
    with pytest.raises(InvalidModelError, match="zz.zip"):
        load_model(sources[-1].location)


def test_safe_extract(zoo: Path, tmp_path: Path) -> None:
    dest = safe_extract_zip(zoo / "gamma.zip", tmp_path / "out")
    assert dest == tmp_path / "out"
    with zipfile.ZipFile(zoo / "gamma.zip") as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == names


def test_extract_does_not_follow_symlink_in_dest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "weights").symlink_to(outside)
    path = _zip(tmp_path / "m.zip", {"rdf.yaml": b"x", "weights/w.pt": b"x"})
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract_zip(path, dest)
    assert not (dest / "rdf.yaml").exists()
    assert not any(outside.iterdir())


# --- bad specs -------------------------------------------------------------------------------------


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(InvalidModelError) as info:
        find_models([missing])
    assert str(missing) in str(info.value)
    assert "rdf.yaml" in str(info.value)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError) as info:
        find_models([tmp_path])
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("name", ["model.yaml", "weights.pt", "notes.txt"])
def test_unsupported_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("x")
    with pytest.raises(InvalidModelError) as info:
        find_models([path])
    assert str(path) in str(info.value)


def test_errors_are_value_errors_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        find_models([tmp_path / "missing"])
    assert isinstance(info.value, BioimageCteError)
    assert "\n" not in str(info.value)
