"""Small untrained packages of any shape the zoo has, for the prediction path's tests and benchmarks.

:func:`build_shaped_package` writes a real bioimageio package (spec 0.5, ``pytorch_state_dict`` +
``torchscript`` weights, test tensors through the declared processing) around
:class:`~bioimage_cte.demozoo.archs.tiny.TinyNet`: 2D or 3D input, one or several input channels,
a parameterized or one exact input size, and one or several output tensors with named channels
and sigmoid, softmax or no postprocessing. The networks are seeded, not trained: what they
predict means nothing, how they are run is what these packages exercise.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

ARCHITECTURE_FILE = Path(__file__).parent / "archs" / "tiny.py"
Postprocessing = Literal["sigmoid", "softmax", "none"]


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor: its id, channel names and postprocessing."""

    id: str = "prob"
    channels: tuple[str, ...] = ("foreground",)
    postprocessing: Postprocessing = "sigmoid"


def build_shaped_package(
    output_path: Path,
    *,
    spatial: Literal["yx", "zyx"] = "yx",
    in_channels: Sequence[str] = ("raw",),
    size: int | tuple[int, int] = (16, 8),
    z_size: int | tuple[int, int] = (12, 4),
    outputs: Sequence[OutputSpec] = (OutputSpec(),),
    halo: int = 4,
    features: int = 4,
    normalize: bool = False,
    seed: int = 0,
    tags: Sequence[str] = ("segmentation",),
    name: str = "tiny shaped model",
) -> Path:
    """Write a seeded :class:`TinyNet` as a zipped bioimageio package.

    Parameters
    ----------
    output_path : Path
        The ``.zip`` to write.
    spatial : {"yx", "zyx"}
        Spatial input axes.
    in_channels : sequence of str
        Names of the input channels.
    size, z_size : int or (min, step)
        Input size of y and x (and of z): one exact size, or ``min + k * step``.
    outputs : sequence of OutputSpec
        Output tensors, in the network's output order.
    halo : int
        Output halo on every spatial axis.
    features : int
        Hidden channels of the network.
    normalize : bool
        Declare zero-mean-unit-variance preprocessing (per image, over the spatial axes), for raw camera
        intensities; off, the network sees the raw values.
    seed : int
        Seeds the weights.
    tags : sequence of str
        RDF tags.
    name : str
        Model name.

    Returns
    -------
    Path
        ``output_path``.
    """
    import imageio.v3 as iio
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    from bioimage_cte.demozoo.archs.tiny import TinyNet

    dims = len(spatial)
    torch.manual_seed(seed)
    kwargs = dict(dims=dims, in_channels=len(in_channels), out_channels=[len(o.channels) for o in outputs],
                  features=features)
    net = TinyNet(**kwargs).eval()

    def axis_size(axis: str) -> int | v0_5.ParameterizedSize:
        value = z_size if axis == "z" else size
        return value if isinstance(value, int) else v0_5.ParameterizedSize(min=value[0], step=value[1])

    def first_size(axis: str) -> int:
        value = z_size if axis == "z" else size
        return value if isinstance(value, int) else value[0] + 2 * value[1]

    shape = (1, len(in_channels), *[first_size(a) for a in spatial])
    raw = np.random.default_rng(seed).random(shape, dtype=np.float32)
    x = (raw - raw.mean()) / (raw.std() + 1e-6) if normalize else raw  # bioimageio's ddof=0 std and eps
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
    logits = logits if isinstance(logits, tuple) else (logits,)
    with tempfile.TemporaryDirectory(prefix="bioimage-cte-shaped-") as tmp:
        work = Path(tmp)
        np.save(work / "test_input.npy", raw)
        out_descrs = []
        for spec, out in zip(outputs, logits, strict=True):
            if spec.postprocessing == "sigmoid":
                out, post = torch.sigmoid(out), [v0_5.SigmoidDescr()]
            elif spec.postprocessing == "softmax":
                out, post = torch.softmax(out, dim=1), [v0_5.SoftmaxDescr()]
            else:
                post = []
            np.save(work / f"test_output_{spec.id}.npy", out.numpy().astype(np.float32))
            axes = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in spec.channels])]
            axes += [v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(a), halo=halo, size=v0_5.SizeReference(
                tensor_id=v0_5.TensorId("raw"), axis_id=v0_5.AxisId(a))) for a in spatial]
            out_descrs.append(v0_5.OutputTensorDescr(
                id=v0_5.TensorId(spec.id), axes=axes, postprocessing=post,
                test_tensor=v0_5.FileDescr(source=work / f"test_output_{spec.id}.npy"),
                data=v0_5.IntervalOrRatioDataDescr(type="float32")))
        cover = (raw[0, 0] if dims == 2 else raw[0, 0, 0]) * 255
        iio.imwrite(work / "cover.png", cover.astype(np.uint8))
        torch.save(net.state_dict(), work / "weights.pt")
        torch.jit.trace(net, torch.from_numpy(x)).save(str(work / "weights_torchscript.pt"))
        shutil.copy(ARCHITECTURE_FILE, work / "tiny.py")
        (work / "README.md").write_text(f"# {name}\n\nUntrained test model of the bioimage-cte project.\n")
        version = v0_5.Version(torch.__version__.split("+")[0])
        in_axes = [v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier(c) for c in in_channels])]
        in_axes += [v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=axis_size(a)) for a in spatial]
        descr = v0_5.ModelDescr(
            name=name,
            description="Untrained tiny network of a given input and output shape (bioimage-cte tests).",
            authors=[v0_5.Author(name="bioimage-cte developers", affiliation="bioimage-cte project")],
            cite=[v0_5.CiteEntry(text="bioimage-cte test model", doi=v0_5.Doi("10.1007/978-3-319-24574-4_28"))],
            license=v0_5.LicenseId("MIT"),
            documentation=v0_5.FileDescr(source=work / "README.md"),
            covers=[v0_5.FileDescr(source=work / "cover.png")],
            tags=list(tags),
            inputs=[v0_5.InputTensorDescr(
                id=v0_5.TensorId("raw"), axes=in_axes, data=v0_5.IntervalOrRatioDataDescr(type="float32"),
                test_tensor=v0_5.FileDescr(source=work / "test_input.npy"),
                preprocessing=[v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(
                    axes=[v0_5.AxisId(a) for a in spatial]))] if normalize else [])],
            outputs=out_descrs,
            weights=v0_5.WeightsDescr(
                pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                    source=work / "weights.pt", pytorch_version=version,
                    architecture=v0_5.ArchitectureFromFileDescr(
                        source=work / "tiny.py", callable=v0_5.Identifier("TinyNet"), kwargs=kwargs)),
                torchscript=v0_5.TorchscriptWeightsDescr(source=work / "weights_torchscript.pt",
                                                         pytorch_version=version, parent="pytorch_state_dict"),
            ),
        )
        output_path.parent.mkdir(parents=True, exist_ok=True)
        save_bioimageio_package(descr, output_path=output_path)
    return output_path
