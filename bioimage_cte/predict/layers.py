"""Finding the layer to perturb in any torch network, from one traced forward pass (no module names).

Grey-box CTE drops feature channels at the network's bottleneck: the deepest, coarsest
representation that the rest of the network builds its prediction from. Zoo networks name their
modules every which way (``bottleneck``, ``encoders.3``, ``encoder.layer4``, ``down4``, ``base``), so
the layer is found from what the network does, not from what it is called:

1. One forward pass of a probe input shaped like the model's input (its channels, 2D or 3D, a
   size the model accepts) records every module's output with a forward hook.
2. A module qualifies if it was called exactly once (a module reused at every level, like a shared
   pooling layer, would be perturbed at several resolutions), returns one feature map of the
   input's spatial rank (batch, channels, 2 or 3 spatial axes), is not globally pooled to one pixel
   (channel attention and image-level branches), and **feeds the network's output**: its output is
   reached when walking the autograd graph back from the output, so a dead-end auxiliary head never
   qualifies. No gradient is computed; the walk only follows ``grad_fn`` links.
3. Among those, the module with the smallest spatial size wins; ties go to the most channels, then
   to the module that finished last (a container's hook fires after its children's, so this picks
   the outermost block, e.g. ``bottleneck`` rather than its last ReLU).

``--layer NAME`` overrides the choice. This module imports torch; import it lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bioimage_cte.base.errors import InvalidModelError

__all__ = ["LayerRecord", "find_perturbation_layer", "probe_input", "trace_layers"]

#: Probe size without a model description: five 2x poolings still leave more than one pixel.
_PROBE_2D = (128, 128)


@dataclass(frozen=True)
class LayerRecord:
    """What one module did in the traced forward pass.

    Attributes
    ----------
    name : str
        Module name as in ``net.named_modules()``.
    shape : tuple of int
        Shape of its output in the last call; ``()`` when the output is not one tensor.
    order : int
        When its (last) call finished, counted over all module calls.
    calls : int
        How often it was called in the pass.
    feeds_output : bool
        Whether the network's output depends on it (found by walking the autograd graph).
    """

    name: str
    shape: tuple[int, ...]
    order: int
    calls: int
    feeds_output: bool

    @property
    def spatial_size(self) -> int:
        """Number of pixels or voxels of one channel of the output."""
        return int(np.prod(self.shape[2:])) if len(self.shape) > 2 else 0


def probe_input(descr: Any, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """A seeded random tensor shaped like the model's first input (:func:`bioimage_cte.predict.tiling.probe_shape`).

    Parameters
    ----------
    descr : bioimageio.spec.model.v0_5.ModelDescr
        The model description: its axis order, channels and a small valid size (2D or 3D).
    device : torch.device or str
        Where the tensor goes (the network's device).
    """
    from bioimage_cte.predict.tiling import probe_shape

    gen = torch.Generator().manual_seed(0)
    return torch.randn(*probe_shape(descr), generator=gen).to(device)


def trace_layers(net: torch.nn.Module, probe: torch.Tensor) -> list[LayerRecord]:
    """Run ``probe`` through ``net`` once and record every named module's output and whether it feeds the output.

    Parameters
    ----------
    net : torch.nn.Module
        The network (any mode; its parameters are not changed and no gradient is computed).
    probe : torch.Tensor
        An input the network accepts, e.g. from :func:`probe_input`.

    Returns
    -------
    list of LayerRecord
        One per module that ran, in the order of ``net.named_modules()``.
    """
    names = {module: name for name, module in net.named_modules() if name}
    last: dict[str, tuple[tuple[int, ...], int, Any]] = {}
    calls: dict[str, int] = {}
    counter = [0]

    def record(module: torch.nn.Module, args: Any, output: Any) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        counter[0] += 1
        if isinstance(output, torch.Tensor):
            last[name] = (tuple(output.shape), counter[0], output.grad_fn)
        else:
            last[name] = ((), counter[0], None)

    hooks = [module.register_forward_hook(record) for module in names]
    try:
        # Grad mode builds the autograd graph the reachability walk needs; the input itself needs no gradient.
        with torch.enable_grad():
            # a probe that requires grad gives every op a grad_fn, also in a network whose weights are frozen
            output = net(probe.detach().clone().requires_grad_(True))
            reached = _reachable(output)
    finally:
        for hook in hooks:
            hook.remove()
    return [
        LayerRecord(name=name, shape=last[name][0], order=last[name][1], calls=calls[name],
                    feeds_output=last[name][2] is not None and last[name][2] in reached)
        for name in names.values() if name in last
    ]


def _reachable(output: Any) -> set[Any]:
    """Every autograd node the output (a tensor or a tuple/list/dict of tensors) depends on."""
    if isinstance(output, dict):
        tensors = [v for v in output.values() if isinstance(v, torch.Tensor)]
    elif isinstance(output, list | tuple):
        tensors = [v for v in output if isinstance(v, torch.Tensor)]
    else:
        tensors = [output] if isinstance(output, torch.Tensor) else []
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    seen: set[Any] = set()
    while stack:  # iterative: a deep network's graph is deeper than Python's recursion limit
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return seen


def find_perturbation_layer(net: torch.nn.Module, *, probe: torch.Tensor | None = None,
                            descr: Any = None) -> str:
    """Name of the module to perturb: the coarsest feature map that the network's output is built from.

    Parameters
    ----------
    net : torch.nn.Module
        Any torch network taking one image tensor (2D or 3D, any number of channels).
    probe : torch.Tensor, optional
        Input of the traced pass; default :func:`probe_input` of ``descr``.
    descr : ModelDescr, optional
        The model description the probe is shaped from; without it and without ``probe``, a
        single-channel 128x128 image.

    Returns
    -------
    str
        A module name as in ``net.named_modules()``.

    Raises
    ------
    InvalidModelError
        If no module qualifies (see the module docstring), saying to pass ``--layer``.
    """
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    if probe is None:
        if descr is not None:
            probe = probe_input(descr, device=device)
        else:
            probe = torch.randn(1, 1, *_PROBE_2D, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        records = trace_layers(net, probe)
    except Exception as e:
        raise InvalidModelError(f"could not trace the network to find the layer to perturb ({type(e).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); pass --layer NAME"
                                ) from e
    rank = probe.ndim
    candidates = [
        r for r in records
        if r.calls == 1 and r.feeds_output and len(r.shape) == rank and r.spatial_size > 1
    ]
    if not candidates:
        raise InvalidModelError("could not find a layer to perturb: no module called once returns a feature map "
                                f"of the input's rank ({rank}-D) that the output depends on; pass --layer NAME")
    return min(candidates, key=lambda r: (r.spatial_size, -r.shape[1], -r.order)).name
