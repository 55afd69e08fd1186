"""Demo packages in other weights formats, exported from networks the demo zoo already trained.

Each variant reads one shipped demo package (its state dict, architecture settings, preprocessing,
outputs and test image), rebuilds the same network and writes it again with other weights:

- ``nuclei-versatile-onnx``: onnx weights only;
- ``nuclei-dim-blurry-torchscript``: torchscript weights only;
- ``nuclei-dense-textured-own-arch``: a state dict whose architecture file is the lab's own copy of the
  UNet (not byte-identical to :mod:`bioimage_cte.demozoo.archs.unet`, so it runs only with
  ``--trust-code``), plus onnx weights;
- ``nuclei-small-bright-keras`` (only where tensorflow is installed): ``keras_hdf5`` weights of the
  same network, see :mod:`bioimage_cte.demozoo.keras_export`;
- ``nuclei-stardist-keras`` (only where tensorflow is installed): ``nuclei-versatile``'s network as a
  StarDist-shaped Keras model, ``prob`` + ``dist`` outputs, see :mod:`bioimage_cte.demozoo.stardist`.

The networks are the trained ones, so a variant transfers exactly as its source does and rankings stay
meaningful; nothing is trained here and no random number is drawn, so a rebuild gives the same
network (the same state dict) every time. Run ``python examples/build_demo_zoo.py --only formats``.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bioimage_cte.demozoo.packaging import ARCHITECTURE_FILE, PackageInfo, build_package

__all__ = ["FORMAT_VARIANTS", "KERAS_VARIANT", "FormatVariant", "build_format_variants", "build_variant",
           "is_format_variant", "own_architecture_source", "trained_only"]


@dataclass(frozen=True)
class FormatVariant:
    """A demo package re-written with other weights: name, the package it comes from, its weights, its card."""

    name: str
    source: str
    formats: tuple[str, ...]
    description: str
    own_architecture: bool = False


FORMAT_VARIANTS: tuple[FormatVariant, ...] = (
    FormatVariant("nuclei-versatile-onnx", "nuclei-versatile", ("onnx",),
                  "nuclei-versatile's network with onnx weights only (grey-box through the ONNX graph)."),
    FormatVariant("nuclei-dim-blurry-torchscript", "nuclei-dim-blurry", ("torchscript",),
                  "nuclei-dim-blurry's network with torchscript weights only."),
    FormatVariant("nuclei-dense-textured-own-arch", "nuclei-dense-textured", ("pytorch_state_dict", "onnx"),
                  "nuclei-dense-textured's network with the lab's own architecture file (runs only with "
                  "--trust-code) and onnx weights.", own_architecture=True),
)
"""The format variants shipped in resources/zoo (the Keras one is added where tensorflow is installed)."""

KERAS_VARIANT = FormatVariant("nuclei-small-bright-keras", "nuclei-small-bright", ("keras_hdf5",),
                              "nuclei-small-bright's network as a Keras model (keras_hdf5 weights, black-box).")


def own_architecture_source() -> bytes:
    """The demo UNet's source as a lab would ship its own copy: same network, other bytes (not the installed module)."""
    header = b"# Our lab's copy of the demo UNet, shipped with the package (not the installed module).\n"
    return header + ARCHITECTURE_FILE.read_bytes()


def read_source_package(path: Path) -> dict:
    """What a demo package says about its network: state dict, kwargs, preprocessing, outputs, test image, card."""
    import torch

    from bioimage_cte.zoo.safe_yaml import load_untrusted_yaml

    with zipfile.ZipFile(path) as zf:
        rdf = load_untrusted_yaml(zf.read("rdf.yaml"), where=f"rdf.yaml of {path}")
        state = torch.load(io.BytesIO(zf.read(rdf["weights"]["pytorch_state_dict"]["source"])), weights_only=True)
        test_input = np.load(io.BytesIO(zf.read(rdf["inputs"][0]["test_tensor"]["source"])))
        documentation = zf.read(rdf["documentation"]["source"]).decode()
    kwargs = dict(rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"])
    steps = [p["id"] for p in rdf["inputs"][0]["preprocessing"] if p["id"] != "ensure_dtype"]
    channels = next(a["channel_names"] for a in rdf["outputs"][0]["axes"] if a.get("type") == "channel")
    halo = next(a.get("halo", 0) for a in rdf["outputs"][0]["axes"] if a.get("id") == "y")
    return {"rdf": rdf, "state": state, "kwargs": kwargs, "preprocessing": steps[0], "channels": list(channels),
            "halo": halo, "test_image": test_input[0, 0], "documentation": documentation}


def build_variant(variant: FormatVariant, zoo: Path, output: Path | None = None) -> Path:
    """Write ``variant`` as ``<zoo>/<name>.zip`` (or ``output``) from its source package in ``zoo``.

    Returns the path written.
    """
    import tempfile

    import torch

    from bioimage_cte.demozoo.archs.unet import UNet2d

    src = read_source_package(zoo / f"{variant.source}.zip")
    net = UNet2d(**src["kwargs"]).eval()
    net.load_state_dict(src["state"])
    rdf = src["rdf"]
    tags = tuple(t for t in rdf["tags"] if t != "pytorch") + tuple(f for f in variant.formats if f != "onnx") + (
        ("onnx",) if "onnx" in variant.formats else ())
    config = {**rdf.get("config", {}).get("bioimage_cte", {}), "exported_from": variant.source,
              "weights": list(variant.formats)}
    documentation = (f"# {variant.name}\n\n{variant.description}\n\nExported from the demo package "
                     f"`{variant.source}` (same trained network).\n\n{src['documentation']}")
    info = PackageInfo(variant.name, variant.description, tags, documentation, config)
    outputs = "foreground" if src["channels"] == ["foreground"] else "foreground+boundary"
    output = output or zoo / f"{variant.name}.zip"
    with tempfile.TemporaryDirectory(prefix="bioimage-cte-arch-") as tmp:
        arch = ARCHITECTURE_FILE
        if variant.own_architecture:
            arch = Path(tmp) / "unet.py"
            arch.write_bytes(own_architecture_source())
        with torch.no_grad():
            build_package(net, src["test_image"], output, info=info, preprocessing=src["preprocessing"],
                          outputs=outputs, features=src["kwargs"]["features"], depth=src["kwargs"]["depth"],
                          halo=src["halo"], formats=variant.formats, architecture_file=arch)
    return output


def build_format_variants(zoo: Path) -> list[Path]:
    """Write every variant of :data:`FORMAT_VARIANTS` into ``zoo``, and the Keras one where tensorflow is installed.

    The StarDist-shaped Keras package is written by :func:`bioimage_cte.demozoo.stardist.build_stardist_package`.
    """
    import importlib.util

    written = [build_variant(v, zoo) for v in FORMAT_VARIANTS]
    if importlib.util.find_spec("tensorflow") is not None:
        written.append(build_variant(KERAS_VARIANT, zoo))
    return written


def is_format_variant(location: str | Path) -> bool:
    """Whether a package is a format variant of another (its card names ``config.bioimage_cte.exported_from``)."""
    from bioimage_cte.zoo.safe_yaml import load_untrusted_yaml

    path = Path(location)
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                raw = zf.read("rdf.yaml")
        else:
            raw = path.read_bytes()
        config = load_untrusted_yaml(raw, where=str(path)).get("config") or {}
    except Exception:  # unreadable packages are reported where they are loaded, not here
        return False
    return isinstance(config.get("bioimage_cte"), dict) and "exported_from" in config["bioimage_cte"]


def trained_only(sources):
    """The model sources that are not format variants: benchmarks and the transfer matrix count each network once."""
    return [s for s in sources if not is_format_variant(s.location)]
