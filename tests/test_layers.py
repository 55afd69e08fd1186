"""The layer to perturb, found from one traced forward pass in any network (no module names)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from bioimage_cte.base.errors import InvalidModelError
from bioimage_cte.demozoo.archs.encdec import EncoderDecoder2d, ResNetFPN2d
from bioimage_cte.demozoo.archs.unet import UNet2d
from bioimage_cte.demozoo.archs.unet3d import UNet3d
from bioimage_cte.predict.layers import find_perturbation_layer, trace_layers

ZOO = Path(__file__).resolve().parents[1] / "resources" / "zoo"


def _probe(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_demo_unet_bottleneck_is_found_without_its_name(depth: int) -> None:
    net = UNet2d(1, 1, features=4, depth=depth).eval()
    assert find_perturbation_layer(net) == "bottleneck"
    renamed = nn.Sequential()  # the same network under other names: still its bottleneck block
    renamed.add_module("core", net)
    assert find_perturbation_layer(renamed) == "core.bottleneck"


def test_3d_unet_deepest_encoder() -> None:
    net = UNet3d(1, 1, features=4, depth=2).eval()
    assert find_perturbation_layer(net, probe=_probe(1, 1, 16, 32, 32)) == "encoders.2"


def test_encoder_decoder_without_skips_picks_the_encoder_output() -> None:
    net = EncoderDecoder2d(2, 1, features=4, depth=3).eval()
    assert find_perturbation_layer(net, probe=_probe(1, 2, 64, 64)) == "encoder"


def test_resnet_like_encoder_picks_its_last_stage() -> None:
    # the encoder returns a list of stage features (not one tensor): its coarsest stage is chosen
    net = ResNetFPN2d(1, 1, features=4, depth=3).eval()
    assert find_perturbation_layer(net, probe=_probe(1, 1, 64, 64)) == "encoder.layer4"


class _WithDeadEndHead(nn.Module):
    """A coarse auxiliary head with many channels whose output the network does not return."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.MaxPool2d(2))
        self.aux = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 64, 1))
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.pool = nn.MaxPool2d(2)
        self.mid = nn.Conv2d(8, 16, 3, padding=1)
        self.up = nn.Upsample(scale_factor=4)
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        self.aux(x)  # computed, never used
        x = x * self.attention(x)  # 1x1 channel attention: smallest, but globally pooled
        x = self.pool(self.pool(x))  # a module used twice
        return self.head(self.up(self.mid(x)))


def test_dead_end_heads_global_pooling_and_reused_modules_are_not_chosen() -> None:
    net = _WithDeadEndHead().eval()
    records = {r.name: r for r in trace_layers(net, _probe(1, 1, 32, 32))}
    assert not records["aux"].feeds_output and records["mid"].feeds_output
    assert records["pool"].calls == 2
    assert records["attention"].spatial_size == 1
    assert find_perturbation_layer(net, probe=_probe(1, 1, 32, 32)) == "mid"


def test_a_network_without_feature_maps_asks_for_layer() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 16))
    with pytest.raises(InvalidModelError, match="--layer"):
        find_perturbation_layer(net, probe=_probe(1, 1, 4, 4))


def test_a_network_that_fails_on_the_probe_asks_for_layer() -> None:
    net = UNet2d(3, 1, features=4, depth=2)  # three input channels, probe has one
    with pytest.raises(InvalidModelError, match="could not trace.*--layer"):
        find_perturbation_layer(net)


def _has_state_dict(package: Path) -> bool:
    import yaml

    with zipfile.ZipFile(package) as z:
        return "pytorch_state_dict" in yaml.safe_load(z.read("rdf.yaml"))["weights"]


# the onnx, torchscript and keras variants have no torch module to trace (their graph layer: test_formats.py)
@pytest.mark.slow
@pytest.mark.parametrize("package", sorted(p.name for p in ZOO.glob("*.zip") if _has_state_dict(p)))
def test_every_demo_zoo_network_gets_its_deepest_layer(package: str) -> None:
    from bioimageio.core.backends.pytorch_backend import load_torch_model

    from bioimage_cte.zoo.models import load_model

    descr = load_model(str(ZOO / package))
    arch = descr.weights.pytorch_state_dict.architecture
    net = load_torch_model(descr.weights.pytorch_state_dict)
    expected = {"UNet2d": "bottleneck", "UNet3d": f"encoders.{arch.kwargs.get('depth', 2)}",
                "EncoderDecoder2d": "encoder", "ResNetFPN2d": f"encoder.layer{arch.kwargs.get('depth', 3) + 1}"}
    assert find_perturbation_layer(net, descr=descr) == expected[str(arch.callable)]
