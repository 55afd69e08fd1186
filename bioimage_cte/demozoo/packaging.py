"""Writing a trained UNet as a real bioimageio model package (spec 0.5).

Each package carries ``pytorch_state_dict`` weights with their architecture file and
``torchscript`` weights, the model's own preprocessing, sigmoid postprocessing, test tensors
computed through exactly that pre/postprocessing, a cover, a README and a licence. Authors have
no ``github_user``: validating one needs the network.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bioimage_cte.demozoo.training import PERCENTILES, Outputs, Preprocessing, normalize

ARCHITECTURE_FILE = Path(__file__).parent / "archs" / "unet.py"


@dataclass(frozen=True)
class PackageInfo:
    """What a model card says about a model (name, description, tags, free-form config)."""

    name: str
    description: str
    tags: tuple[str, ...] = ()
    documentation: str = ""
    config: dict[str, Any] = field(default_factory=dict)


def _cover(image: np.ndarray, prob: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (1, 99.8))
    left = np.clip((image - lo) / (hi - lo + 1e-6), 0, 1)
    return (np.concatenate([left, prob], axis=1) * 255).astype(np.uint8)


def _preprocessing_descr(method: Preprocessing):
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ScaleRangeDescr,
        ScaleRangeKwargs,
        ZeroMeanUnitVarianceDescr,
        ZeroMeanUnitVarianceKwargs,
    )

    axes = [AxisId("y"), AxisId("x")]
    if method == "zero_mean_unit_variance":
        return ZeroMeanUnitVarianceDescr(kwargs=ZeroMeanUnitVarianceKwargs(axes=axes))
    return ScaleRangeDescr(
        kwargs=ScaleRangeKwargs(axes=axes, min_percentile=PERCENTILES[0], max_percentile=PERCENTILES[1])
    )


def _axes(kind: str, channel_names: list[str], depth: int, halo: int, *, channel_last: bool = False):
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        BatchAxis,
        ChannelAxis,
        Identifier,
        ParameterizedSize,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxisWithHalo,
        TensorId,
    )

    channel = ChannelAxis(channel_names=[Identifier(c) for c in channel_names])
    if kind == "input":
        size = ParameterizedSize(min=64, step=2**depth)
        space = [SpaceInputAxis(id=AxisId(a), size=size) for a in "yx"]
    else:
        space = [
            SpaceOutputAxisWithHalo(
                id=AxisId(a), halo=halo, size=SizeReference(tensor_id=TensorId("raw"), axis_id=AxisId(a))
            )
            for a in "yx"
        ]
    return [BatchAxis()] + (space + [channel] if channel_last else [channel] + space)


def build_package(
    net,
    test_image: np.ndarray,
    output_path: Path,
    *,
    info: PackageInfo,
    preprocessing: Preprocessing,
    outputs: Outputs,
    features: int,
    depth: int,
    halo: int = 16,
    formats: tuple[str, ...] = ("pytorch_state_dict", "torchscript"),
    architecture_file: Path = ARCHITECTURE_FILE,
) -> Path:
    """Write ``net`` (a trained ``UNet2d``) as a zipped bioimageio model package.

    Parameters
    ----------
    net : torch.nn.Module
        Trained network in eval mode, returning logits.
    test_image : numpy.ndarray
        Raw 2-D test image (y, x) whose sides are valid input sizes (64 + n * 2**depth).
    output_path : Path
        The ``.zip`` to write.
    info : PackageInfo
        Name, description, tags and free-form config of the model card.
    preprocessing : {"zero_mean_unit_variance", "scale_range"}
        The normalisation the network was trained with.
    outputs : {"foreground", "foreground+boundary"}
        Output channels.
    features, depth : int
        Architecture keyword arguments, recorded in the package.
    halo : int
        Output halo in pixels, used when predicting tile by tile.
    formats : tuple of str
        Weights to write, among ``pytorch_state_dict``, ``torchscript``, ``onnx`` and ``keras_hdf5`` (the
        demo zoo: the first two); the first is the parent of the others. With ``keras_hdf5`` the tensors
        are channels-last (b, y, x, c).
    architecture_file : Path
        The ``pytorch_state_dict`` architecture file shipped as ``unet.py`` (default: the installed UNet).

    Returns
    -------
    Path
        ``output_path``.
    """
    import imageio.v3 as iio
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model.v0_5 import (
        Author,
        CiteEntry,
        Doi,
        FileDescr,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        SigmoidDescr,
        TensorId,
    )

    channels = ["foreground"] if outputs == "foreground" else ["foreground", "boundary"]
    with tempfile.TemporaryDirectory(prefix="bioimage-cte-pkg-") as tmp:
        work = Path(tmp)
        raw = test_image.astype(np.float32)[None, None]
        x = torch.from_numpy(normalize(test_image, method=preprocessing)[None, None])
        with torch.no_grad():
            prob = torch.sigmoid(net(x)).numpy().astype(np.float32)
        channel_last = "keras_hdf5" in formats  # TensorFlow's CPU convolutions are channels-last only
        tensors = (raw, prob) if not channel_last else (raw.transpose(0, 2, 3, 1), prob.transpose(0, 2, 3, 1))
        np.save(work / "test_input.npy", tensors[0])
        np.save(work / "test_output.npy", tensors[1])
        iio.imwrite(work / "cover.png", _cover(test_image, prob[0, 0]))
        weights = _weights(net, x, work, formats=formats, architecture_file=architecture_file,
                           kwargs=dict(in_channels=1, out_channels=len(channels), features=features, depth=depth))
        (work / "README.md").write_text(info.documentation or f"# {info.name}\n\n{info.description}\n")
        (work / "LICENSE").write_text("MIT License. Demo model of the bioimage-cte project.\n")
        descr = ModelDescr(
            name=info.name,
            description=info.description,
            authors=[Author(name="bioimage-cte developers", affiliation="bioimage-cte project")],
            cite=[CiteEntry(text="Ronneberger et al. U-Net", doi=Doi("10.1007/978-3-319-24574-4_28"))],
            license=LicenseId("MIT"),
            documentation=FileDescr(source=work / "README.md"),
            covers=[FileDescr(source=work / "cover.png")],
            attachments=[FileDescr(source=work / "LICENSE")],
            tags=list(info.tags),
            inputs=[
                InputTensorDescr(
                    id=TensorId("raw"),
                    axes=_axes("input", ["raw"], depth, halo, channel_last=channel_last),
                    test_tensor=FileDescr(source=work / "test_input.npy"),
                    data=IntervalOrRatioDataDescr(type="float32"),
                    preprocessing=[_preprocessing_descr(preprocessing)],
                )
            ],
            outputs=[
                OutputTensorDescr(
                    id=TensorId("prob"),
                    axes=_axes("output", channels, depth, halo, channel_last=channel_last),
                    test_tensor=FileDescr(source=work / "test_output.npy"),
                    data=IntervalOrRatioDataDescr(type="float32"),
                    postprocessing=[SigmoidDescr()],
                )
            ],
            weights=weights,
            config={"bioimage_cte": info.config},
        )
        output_path.parent.mkdir(parents=True, exist_ok=True)
        save_bioimageio_package(descr, output_path=output_path)
    return output_path


#: ONNX opset of exported weights (every onnxruntime the extra allows runs it)
ONNX_OPSET = 17


def _weights(net, x, work: Path, *, formats: tuple[str, ...], architecture_file: Path, kwargs: dict[str, int]):
    """Write the weights files of ``net`` into ``work``; returns their WeightsDescr (the first format is the parent)."""
    import torch
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr,
        Identifier,
        OnnxWeightsDescr,
        PytorchStateDictWeightsDescr,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    version = Version(torch.__version__.split("+")[0])
    parent = formats[0]
    entries = {}
    for fmt in formats:
        extra = {} if fmt == parent else {"parent": parent}
        if fmt == "pytorch_state_dict":
            torch.save(net.state_dict(), work / "weights.pt")
            shutil.copy(architecture_file, work / "unet.py")
            entries[fmt] = PytorchStateDictWeightsDescr(
                source=work / "weights.pt", pytorch_version=version,
                architecture=ArchitectureFromFileDescr(source=work / "unet.py", callable=Identifier("UNet2d"),
                                                       kwargs=kwargs), **extra)
        elif fmt == "torchscript":
            torch.jit.trace(net, x).save(str(work / "weights_torchscript.pt"))
            entries[fmt] = TorchscriptWeightsDescr(source=work / "weights_torchscript.pt", pytorch_version=version,
                                                   **extra)
        elif fmt == "onnx":
            _export_onnx(net, x, work / "weights.onnx")
            entries[fmt] = OnnxWeightsDescr(source=work / "weights.onnx", opset_version=ONNX_OPSET, **extra)
        elif fmt == "keras_hdf5":
            import tensorflow as tf
            from bioimageio.spec.model.v0_5 import KerasHdf5WeightsDescr

            from bioimage_cte.demozoo.keras_export import save_keras_h5

            save_keras_h5(net, x, work / "weights.h5")
            entries[fmt] = KerasHdf5WeightsDescr(source=work / "weights.h5",
                                                 tensorflow_version=Version(tf.__version__), **extra)
        else:
            raise ValueError(f"unknown weights format {fmt!r}: use pytorch_state_dict, torchscript, onnx or "
                             "keras_hdf5")
    return WeightsDescr(**entries)


def _export_onnx(net, x, path: Path | BinaryIO) -> None:
    """``net`` as an ONNX graph (a file or a binary buffer) with free batch and spatial axes (torch's TorchScript-based
    exporter)."""
    import contextlib
    import io
    import warnings

    import torch

    axes = {0: "batch", 2: "y", 3: "x"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's deprecation notice
        target = str(path) if isinstance(path, Path) else path
        torch.onnx.export(net, (x,), target, dynamo=False, input_names=["raw"], output_names=["prob"],
                          dynamic_axes={"raw": axes, "prob": axes}, opset_version=ONNX_OPSET)
