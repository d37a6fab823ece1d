"""Architectures: shapes on every input size, exact prunable counts, timm registration."""
from __future__ import annotations

import pytest
import timm
import torch

from prunebench.errors import PrunebenchError
from prunebench.training.masking import num_prunable, prunable_layers
from prunebench.training.models import ARCHS, create_model

# Prunable weights (Conv2d + Linear weights, no biases) on 32x32x3 inputs with 10 classes.
# conv4: 3*64*9 + 64*64*9 + 64*128*9 + 128*128*9 + 8192*256 + 256*256 + 256*10 = 2,425,024.
EXPECTED_PRUNABLE = {
    "conv2": 3 * 64 * 9 + 64 * 64 * 9 + 16384 * 256 + 256 * 256 + 2560,
    "conv4": 2_425_024,
    "conv6": (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 256 * 256) * 9
    + 4096 * 256 + 256 * 256 + 2560,
    "vgg19": 9 * (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 3 * 256 * 256
                  + 256 * 512 + 3 * 512 * 512 + 4 * 512 * 512) + 5120,
    "resnet18": 11_164_352,
}


@pytest.mark.parametrize("arch", ARCHS)
def test_prunable_count_cifar(arch: str) -> None:
    assert num_prunable(create_model(arch, 10, 3, 32)) == EXPECTED_PRUNABLE[arch]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("shape,classes", [((1, 8, 8), 10), ((3, 32, 32), 100),
                                           ((3, 64, 64), 200)])
def test_forward_any_input(arch: str, shape: tuple[int, int, int], classes: int) -> None:
    model = create_model(arch, classes, shape[0], shape[1]).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, classes)


@pytest.mark.parametrize("arch", ARCHS)
def test_registered_in_timm(arch: str) -> None:
    model = timm.create_model(f"pb_{arch}", num_classes=7, in_chans=1, img_size=16).eval()
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 7)
    # Our names never shadow timm's own vgg19 / resnet18.
    assert "resnet18" in timm.list_models("resnet18")


def test_resnet18_has_cifar_stem() -> None:
    model = create_model("resnet18", 10, 3, 32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_conv_nets_have_no_bias_or_batchnorm() -> None:
    for arch in ("conv2", "conv4", "conv6"):
        model = create_model(arch, 10, 3, 32)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert all(layer.bias is None for _, layer in prunable_layers(model))


def test_unknown_arch_lists_allowed() -> None:
    with pytest.raises(PrunebenchError, match="conv4"):
        create_model("conv5", 10, 3, 32)
