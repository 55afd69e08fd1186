"""A corpus of bad inputs, built by code: broken packages, unsafe zips, broken networks, bad images.

:func:`build_corpus` writes one real bioimageio package of a tiny UNet with
:func:`bioimage_cte.demozoo.packaging.build_package`, then derives every bad package from it by rewriting
zip entries (and the sha256 of each rewritten file in the rdf.yaml, so that only the intended
defect is left). Nothing is downloaded. About 5 s on a laptop core.

``MODELS`` maps each package name to what is wrong with it; ``IMAGES`` does the same for the
image folders.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import yaml

from bioimage_cte.demozoo.archs.unet import UNet2d
from bioimage_cte.demozoo.packaging import ARCHITECTURE_FILE, PackageInfo, build_package

FEATURES, DEPTH = 4, 1
GOOD = ("good-file-arch", "good-library-arch")
#: package -> (what is wrong with it, a part of the one-line reason it must be reported with)
MODELS = {
    "bad-yaml": ("rdf.yaml is not valid YAML",
                 "rdf.yaml is not valid YAML (expected ',' or ']', but got ':' at line 3"),
    "yaml-python-tag": ("rdf.yaml with a !!python/object/apply tag that would run a command",
                        "rdf.yaml is not valid YAML (could not determine a constructor for the tag "
                        "'tag:yaml.org,2002:python/object/apply:os.system' at line 2"),
    "not-an-rdf": ("valid YAML that is not an RDF", "not a valid bioimageio RDF (type: Missing field 'type')"),
    "dataset-rdf": ("an RDF of type dataset", "RDF of type 'dataset', not a model; pass model packages only"),
    "missing-weights": ("weights.pt is listed but not in the zip",
                        "weights.pt is listed in rdf.yaml (weights.pytorch_state_dict.source) but missing"),
    "sha256-mismatch": ("weights.pt does not match its sha256", "SHA256 mismatch for :zipfile:/weights.pt"),
    "zip-traversal": ("a zip entry ../evil.txt", "has an entry '../evil.txt' that points outside the package"),
    "zip-absolute": ("a zip entry /tmp/evil.txt", "has an entry with an absolute path '/tmp/evil.txt'"),
    "zip-oversized": ("a zip entry that claims 3 GiB", "entry 'huge.bin' unpacks to 3221225472 bytes, above the limit"),
    "pickle-weights": ("weights.pt is a pickle that runs code when unpickled, not a state dict",
                       "weights file weights.pt is an unsafe pickle (loading it would run code it carries): torch.load "
                       "with weights_only=True refused it, nothing in it ran"),
    "forward-raises": ("the network wants 2 channels, the RDF declares 1: forward raises",
                       "the model crashed on"),
    "nan-output": ("the network returns NaN", "the model returned NaN or inf on"),
    "model-3d": ("a 3D model (z axis) on 2D images",
                 "3D model (input axes zyx) but the image is 2D (64, 64); rank 3D models on z-stacks"),
    "rgb-model": ("a model for 3-channel images", "model expects 3 input channels"),
    "custom-code-only": ("the same architecture file, and no torchscript weights to fall back to",
                         "architecture is Python code shipped in the package (unet.py:UNet2d), which does not run"),
}
#: models that load but may not run their network by default: grey-box estimators skip them
SKIPPED_BY_GREYBOX = ("custom-code-only",)
#: models that cannot see the corpus's 2D single-channel images: skipped, from their RDF, before anything loads
NOT_FITTING = ("model-3d", "rgb-model")
#: an architecture file that is no known module (it writes a marker when imported), beside torchscript weights:
#: grey-box estimators rank it through its torchscript weights (exported to ONNX), and the file never runs
RANKED_WITHOUT_ITS_CODE = "custom-code-arch"
#: image folder -> what is wrong with it
IMAGES = {
    "unreadable": "a .tif of random bytes",
    "zero-bytes": "a 0-byte .tif",
    "empty-folder": "no images",
    "constant": "one constant image next to a normal one",
    "mixed-shapes": "images of three different shapes, one of them a z-stack",
}


@dataclass(frozen=True)
class Corpus:
    """Where the corpus is: ``zoo`` (every package, good and bad), ``images/<case>`` and the marker files."""

    root: Path
    zoo: Path
    images: Path
    good_images: Path
    marker: Path
    pickle_marker: Path

    def package(self, name: str) -> Path:
        return self.zoo / f"{name}.zip"


def _net(seed: int, in_channels: int = 1) -> torch.nn.Module:
    """A random tiny UNet whose logits are scaled to spread around 0: a model with a real, varied output."""
    torch.manual_seed(seed)
    net = UNet2d(in_channels=in_channels, out_channels=1, features=FEATURES, depth=DEPTH).eval()
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(1, in_channels, 64, 64)).astype(np.float32))
    with torch.no_grad():
        logits = net(x)
        net.head.weight *= 3.0 / float(logits.std())
        net.head.bias *= 3.0 / float(logits.std())
        net.head.bias -= net(x).median()
    return net


def _state_dict_bytes(net: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()


def _torchscript_bytes(net: torch.nn.Module, in_channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, in_channels, 64, 64)), buffer)
    return buffer.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _set_sha(node: Any, file_name: str, data: bytes) -> None:
    """Give every RDF entry whose source is ``file_name`` the sha256 of ``data``."""
    if isinstance(node, dict):
        if node.get("source") == file_name and "sha256" in node:
            node["sha256"] = _sha(data)
        for value in node.values():
            _set_sha(value, file_name, data)
    elif isinstance(node, list):
        for value in node:
            _set_sha(value, file_name, data)


def _rewrite(src: Path, dst: Path, *, rdf: Callable[[dict], None] | None = None, files: dict[str, bytes] | None = None,
             drop: tuple[str, ...] = (), rdf_text: str | None = None, rehash: bool = True,
             extra: dict[str, bytes] | None = None) -> Path:
    """Copy package ``src`` to ``dst`` with some files replaced, dropped or added and the rdf.yaml edited."""
    files = dict(files or {})
    with zipfile.ZipFile(src) as zin:
        content = {n: zin.read(n) for n in zin.namelist()}
    data = yaml.safe_load(content["rdf.yaml"])
    if rdf is not None:
        rdf(data)
    if rehash:
        for name, blob in files.items():
            _set_sha(data, name, blob)
    content.update(files)
    content["rdf.yaml"] = rdf_text.encode() if rdf_text is not None else yaml.safe_dump(data, sort_keys=False).encode()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, blob in content.items():
            if name not in drop:
                zout.writestr(name, blob)
        for name, blob in (extra or {}).items():
            zout.writestr(zipfile.ZipInfo(name), blob)
    return dst


def _claim_size(path: Path, entry: str, size: int) -> None:
    """Make the zip's headers claim that ``entry`` unpacks to ``size`` bytes (a zip bomb, without the bomb)."""
    raw = bytearray(path.read_bytes())
    name = entry.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        start = 0
        while (at := raw.find(signature, start)) >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if raw[name_at:name_at + len(name)] == name:
                raw[at + offset:at + offset + 4] = struct.pack("<I", size)
            start = at + 4
    path.write_bytes(bytes(raw))


class _RunsOnUnpickle:
    """Pickled as a call to ``open(marker, "w")``: what a malicious weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _library_arch(rdf: dict) -> None:
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    for key in ("source", "sha256"):
        arch.pop(key)
    arch["import_from"] = "bioimage_cte.demozoo.archs.unet"


def _model_3d(rdf: dict) -> None:
    z_in = {"type": "space", "id": "z", "size": {"min": 8, "step": 8}}
    z_out = {"type": "space", "id": "z", "size": {"tensor_id": "raw", "axis_id": "z"}}
    rdf["inputs"][0]["axes"].insert(2, z_in)
    rdf["outputs"][0]["axes"].insert(2, z_out)


def _rgb(rdf: dict) -> None:
    rdf["inputs"][0]["axes"][1]["channel_names"] = ["r", "g", "b"]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _build_models(zoo: Path, work: Path, marker: Path, pickle_marker: Path) -> None:
    test_image = np.random.default_rng(0).normal(100, 20, (64, 64)).astype(np.float32)
    info = PackageInfo("corpus base", "Tiny random UNet: the base of the bad-input corpus.", tags=("segmentation",))
    base = build_package(_net(1), test_image, work / "base.zip", info=info, preprocessing="zero_mean_unit_variance",
                         outputs="foreground", features=FEATURES, depth=DEPTH)
    other = build_package(_net(2), test_image, work / "other.zip", info=info, preprocessing="zero_mean_unit_variance",
                          outputs="foreground", features=FEATURES, depth=DEPTH)
    shutil.copy(base, zoo / "good-file-arch.zip")
    _rewrite(other, zoo / "good-library-arch.zip", rdf=_library_arch, drop=("unet.py",))

    _rewrite(base, zoo / "bad-yaml.zip", rdf_text="name: corpus\ninputs: [raw\ntype: model\n")
    _rewrite(base, zoo / "yaml-python-tag.zip",
             rdf_text=f"type: model\nname: !!python/object/apply:os.system ['touch {marker}']\n")
    _rewrite(base, zoo / "not-an-rdf.zip", rdf_text="hello: world\nnumbers: [1, 2, 3]\n")
    _rewrite(base, zoo / "dataset-rdf.zip", rdf_text=yaml.safe_dump({
        "type": "dataset", "format_version": "0.3.0", "name": "Corpus nuclei images",
        "description": "A dataset RDF, not a model.", "source": "https://example.com/data.zip"}))
    _rewrite(base, zoo / "missing-weights.zip", drop=("weights.pt",))
    _rewrite(base, zoo / "sha256-mismatch.zip", files={"weights.pt": _state_dict_bytes(_net(3))}, rehash=False)
    _rewrite(base, zoo / "zip-traversal.zip", extra={"../evil.txt": b"escaped"})
    _rewrite(base, zoo / "zip-absolute.zip", extra={"/tmp/evil.txt": b"escaped"})
    _rewrite(base, zoo / "zip-oversized.zip", extra={"huge.bin": b"0" * 64})
    _claim_size(zoo / "zip-oversized.zip", "huge.bin", 3 * 1024**3)

    buffer = io.BytesIO()
    torch.save({"model": _net(1).state_dict(), "hook": _RunsOnUnpickle(pickle_marker)}, buffer)
    _rewrite(base, zoo / "pickle-weights.zip", files={"weights.pt": buffer.getvalue()})

    two = _net(4, in_channels=2)
    _rewrite(base, zoo / "forward-raises.zip", files={"weights.pt": _state_dict_bytes(two),
                                                     "weights_torchscript.pt": _torchscript_bytes(two, 2)},
             rdf=lambda r: r["weights"]["pytorch_state_dict"]["architecture"]["kwargs"].update(in_channels=2))
    nan = _net(1)
    with torch.no_grad():
        nan.head.bias.fill_(float("nan"))
    _rewrite(base, zoo / "nan-output.zip", files={"weights.pt": _state_dict_bytes(nan),
                                                 "weights_torchscript.pt": _torchscript_bytes(nan)})
    with zipfile.ZipFile(base) as zf:
        test_in, test_out = (np.load(io.BytesIO(zf.read(n))) for n in ("test_input.npy", "test_output.npy"))
    _rewrite(base, zoo / "model-3d.zip", rdf=_model_3d,
             files={"test_input.npy": _npy(np.repeat(test_in[:, :, None], 8, axis=2)),
                    "test_output.npy": _npy(np.repeat(test_out[:, :, None], 8, axis=2))})
    _rewrite(base, zoo / "rgb-model.zip", rdf=_rgb, files={"test_input.npy": _npy(np.repeat(test_in, 3, axis=1))})

    evil = ARCHITECTURE_FILE.read_bytes() + (
        f"\n\n# package code: proves whether it ran\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    ).encode()
    _rewrite(base, zoo / "custom-code-arch.zip", files={"unet.py": evil})

    def no_torchscript(rdf: dict) -> None:
        del rdf["weights"]["torchscript"]

    _rewrite(base, zoo / "custom-code-only.zip", files={"unet.py": evil}, rdf=no_torchscript,
             drop=("weights_torchscript.pt",))


def _build_images(images: Path, good: Path) -> None:
    rng = np.random.default_rng(5)
    good.mkdir(parents=True)
    for i in range(2):
        tifffile.imwrite(good / f"img{i}.tif", rng.normal(100, 20, (64, 64)).astype(np.float32))
    for case in IMAGES:
        (images / case).mkdir(parents=True)
    (images / "unreadable" / "noise.tif").write_bytes(rng.bytes(2048))
    (images / "zero-bytes" / "empty.tif").write_bytes(b"")
    tifffile.imwrite(images / "constant" / "a-normal.tif", rng.normal(100, 20, (64, 64)).astype(np.float32))
    tifffile.imwrite(images / "constant" / "b-flat.tif", np.full((64, 64), 7, np.uint16))
    tifffile.imwrite(images / "mixed-shapes" / "a-64x64.tif", rng.normal(100, 20, (64, 64)).astype(np.float32))
    tifffile.imwrite(images / "mixed-shapes" / "b-90x71.tif", rng.normal(100, 20, (90, 71)).astype(np.float32))
    tifffile.imwrite(images / "mixed-shapes" / "c-stack.tif", rng.normal(100, 20, (5, 40, 48)).astype(np.float32))


def build_corpus(root: Path) -> Corpus:
    """Write the whole corpus under ``root`` (a new folder)."""
    corpus = Corpus(root, root / "zoo", root / "images", root / "good-images", root / "marker-arch.txt",
                    root / "marker-pickle.txt")
    corpus.zoo.mkdir(parents=True)
    work = root / "work"
    work.mkdir()
    _build_models(corpus.zoo, work, corpus.marker, corpus.pickle_marker)
    _build_images(corpus.images, corpus.good_images)
    shutil.rmtree(work)
    return corpus


class _NeverReturns(torch.nn.Module):
    """A TorchScript forward pass that loops forever inside the TorchScript interpreter (native code: no Python
    step in which a thread could be interrupted)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        while bool(y.sum() > -1.0e30):
            y = y * 1.0
        return y


def hanging_torchscript(dst: Path) -> Path:
    """A real demo package (torchscript weights only, so it runs without --trust-code) whose forward never returns."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_NeverReturns()), buffer)
    src = Path(__file__).resolve().parents[1] / "resources" / "zoo" / "nuclei-dim-blurry-torchscript.zip"
    return _rewrite(src, dst, files={"weights_torchscript.pt": buffer.getvalue()})
