"""Writing the demo zoo's networks of other shapes as real bioimageio model packages (spec 0.5).

As :func:`bioimage_cte.demozoo.packaging.build_package`, for any architecture of
:mod:`bioimage_cte.demozoo.archs`, 2D (``yx``) or 3D (``zyx``) inputs with any number of named
channels, and sigmoid or softmax outputs with named channels. Each package carries
``pytorch_state_dict`` weights with their architecture file (byte-identical to the installed module)
and ``torchscript`` weights, per-channel preprocessing over the spatial axes, test tensors computed
through exactly that pre/postprocessing, a cover, a README and a licence.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bioimage_cte.demozoo.packaging import PackageInfo, _cover
from bioimage_cte.demozoo.training import PERCENTILES, Preprocessing
from bioimage_cte.demozoo.training_nd import normalize_channels

ARCHS = Path(__file__).parent / "archs"


@dataclass(frozen=True)
class Shape:
    """The tensors a package declares.

    Parameters
    ----------
    spatial : {"yx", "zyx"}
        Spatial axes of input and output.
    input_channels, output_channels : list of str
        Channel names (e.g. ``["nuclei", "membrane"]``, ``["foreground", "boundary"]``).
    minimum, step : dict of str to int
        Smallest input size and size step per spatial axis.
    halo : dict of str to int
        Output halo per spatial axis, used when predicting tile by tile.
    postprocessing : {"sigmoid", "softmax"}
        Output activation (softmax over the channel axis for multi-class models).
    """

    spatial: Literal["yx", "zyx"]
    input_channels: list[str]
    output_channels: list[str]
    minimum: dict[str, int]
    step: dict[str, int]
    halo: dict[str, int]
    postprocessing: Literal["sigmoid", "softmax"] = "sigmoid"


@dataclass(frozen=True)
class Architecture:
    """A module of :mod:`bioimage_cte.demozoo.archs`, the class in it and its keyword arguments."""

    file: str
    callable: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def _preprocessing(method: Preprocessing, spatial: str):
    from bioimageio.spec.model.v0_5 import (
        AxisId,
        ScaleRangeDescr,
        ScaleRangeKwargs,
        ZeroMeanUnitVarianceDescr,
        ZeroMeanUnitVarianceKwargs,
    )

    axes = [AxisId(a) for a in spatial]
    if method == "zero_mean_unit_variance":
        return ZeroMeanUnitVarianceDescr(kwargs=ZeroMeanUnitVarianceKwargs(axes=axes))
    return ScaleRangeDescr(kwargs=ScaleRangeKwargs(axes=axes, min_percentile=PERCENTILES[0],
                                                   max_percentile=PERCENTILES[1]))


def _axes(shape: Shape, kind: Literal["input", "output"]):
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

    names = shape.input_channels if kind == "input" else shape.output_channels
    axes: list[Any] = [BatchAxis(), ChannelAxis(channel_names=[Identifier(c) for c in names])]
    for a in shape.spatial:
        if kind == "input":
            axes.append(SpaceInputAxis(id=AxisId(a), size=ParameterizedSize(min=shape.minimum[a], step=shape.step[a])))
        else:
            axes.append(SpaceOutputAxisWithHalo(id=AxisId(a), halo=shape.halo[a],
                                                size=SizeReference(tensor_id=TensorId("raw"), axis_id=AxisId(a))))
    return axes


def build_package_nd(net, test_image: np.ndarray, output_path: Path, *, info: PackageInfo, shape: Shape,
                     architecture: Architecture, preprocessing: Preprocessing) -> Path:
    """Write ``net`` as a zipped bioimageio model package.

    Parameters
    ----------
    net : torch.nn.Module
        Trained network in eval mode, returning logits, built as ``architecture`` describes.
    test_image : numpy.ndarray
        Raw test image (c, *spatial) whose spatial sizes are valid input sizes.
    output_path : Path
        The ``.zip`` to write.
    info : PackageInfo
        Name, description, tags and free-form config of the model card.
    shape : Shape
        Axes, channel names, sizes, halo and output activation.
    architecture : Architecture
        Where the network's class lives, recorded in the package.
    preprocessing : {"zero_mean_unit_variance", "scale_range"}
        The normalisation (per channel, over the spatial axes) the network was trained with.

    Returns
    -------
    Path
        ``output_path``.
    """
    import imageio.v3 as iio
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromFileDescr,
        Author,
        CiteEntry,
        Doi,
        FileDescr,
        Identifier,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        LicenseId,
        ModelDescr,
        OutputTensorDescr,
        PytorchStateDictWeightsDescr,
        SigmoidDescr,
        SoftmaxDescr,
        SoftmaxKwargs,
        TensorId,
        TorchscriptWeightsDescr,
        Version,
        WeightsDescr,
    )

    spatial_ndim = len(shape.spatial)
    with tempfile.TemporaryDirectory(prefix="bioimage-cte-pkg-") as tmp:
        work = Path(tmp)
        raw = test_image.astype(np.float32)[None]
        x = torch.from_numpy(normalize_channels(test_image, method=preprocessing, spatial_ndim=spatial_ndim)[None])
        with torch.no_grad():
            logits = net(x)
            prob = (torch.softmax(logits, dim=1) if shape.postprocessing == "softmax" else torch.sigmoid(logits))
        prob = prob.numpy().astype(np.float32)
        np.save(work / "test_input.npy", raw)
        np.save(work / "test_output.npy", prob)
        middle = (lambda a: a[a.shape[0] // 2]) if spatial_ndim == 3 else (lambda a: a)
        shown = prob[0, -1] if shape.postprocessing == "softmax" else prob[0, 0]
        iio.imwrite(work / "cover.png", _cover(middle(test_image[0]), middle(shown)))
        torch.save(net.state_dict(), work / "weights.pt")
        torch.jit.trace(net, x).save(str(work / "weights_torchscript.pt"))
        shutil.copy(ARCHS / architecture.file, work / architecture.file)
        (work / "README.md").write_text(info.documentation or f"# {info.name}\n\n{info.description}\n")
        (work / "LICENSE").write_text("MIT License. Demo model of the bioimage-cte project.\n")
        version = Version(torch.__version__.split("+")[0])
        post = (SoftmaxDescr(kwargs=SoftmaxKwargs(axis="channel")) if shape.postprocessing == "softmax"
                else SigmoidDescr())
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
            inputs=[InputTensorDescr(id=TensorId("raw"), axes=_axes(shape, "input"),
                                     test_tensor=FileDescr(source=work / "test_input.npy"),
                                     data=IntervalOrRatioDataDescr(type="float32"),
                                     preprocessing=[_preprocessing(preprocessing, shape.spatial)])],
            outputs=[OutputTensorDescr(id=TensorId("prob"), axes=_axes(shape, "output"),
                                       test_tensor=FileDescr(source=work / "test_output.npy"),
                                       data=IntervalOrRatioDataDescr(type="float32"), postprocessing=[post])],
            weights=WeightsDescr(
                pytorch_state_dict=PytorchStateDictWeightsDescr(
                    source=work / "weights.pt",
                    pytorch_version=version,
                    architecture=ArchitectureFromFileDescr(source=work / architecture.file,
                                                           callable=Identifier(architecture.callable),
                                                           kwargs=architecture.kwargs),
                ),
                torchscript=TorchscriptWeightsDescr(source=work / "weights_torchscript.pt", pytorch_version=version,
                                                    parent="pytorch_state_dict"),
            ),
            config={"bioimage_cte": info.config},
        )
        output_path.parent.mkdir(parents=True, exist_ok=True)
        save_bioimageio_package(descr, output_path=output_path)
    return output_path
