"""The suite's architectures, registered in timm's registry as `pb_<arch>`.

conv2/conv4/conv6 follow the Lottery Ticket conv nets (Frankle & Carbin 2019): 3x3 convs, no
bias, ReLU, 2x2 max-pool after each pair, FC 256-256-classes. vgg19 is the CIFAR VGG with
BatchNorm and global average pooling. resnet18 is timm's ResNet-18 with the CIFAR stem
(3x3 stride-1 conv, no max-pool, initialised like timm's other convs) and every BatchNorm scale
at 1. Every net accepts any input size and channel count; pools use
ceil_mode so 8x8 `digits` images survive four halvings.
"""
from __future__ import annotations

import timm
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from prunebench.errors import PrunebenchError
from prunebench.plan.config import ARCHS

TIMM_PREFIX = "pb_"


def _pooled(size: int, pools: int) -> int:
    for _ in range(pools):
        size = -(-size // 2)
    return size


class ConvNet(nn.Module):
    """Lottery-Ticket conv net: `widths` are the conv widths, pooled after every pair."""

    def __init__(self, widths: tuple[int, ...], num_classes: int, in_chans: int, img_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.ReLU(inplace=True)]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            channels = width
        self.features = nn.Sequential(*layers)
        side = _pooled(img_size, len(widths) // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side * side, 256, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(256, 256, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(256, num_classes, bias=False),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512)


class VGG(nn.Module):
    """CIFAR VGG: 3x3 conv + BatchNorm + ReLU blocks, global average pool, one Linear."""

    def __init__(self, cfg: tuple, num_classes: int, in_chans: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False),
                           nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def kaiming_init(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_in, ReLU) weights and zero biases for every Conv2d and Linear."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _conv_net(widths: tuple[int, ...], num_classes: int, in_chans: int, img_size: int) -> ConvNet:
    return kaiming_init(ConvNet(widths, num_classes, in_chans, img_size))


@register_model
def pb_conv2(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3,
             img_size: int = 32, **_) -> nn.Module:
    return _conv_net((64, 64), num_classes, in_chans, img_size)


@register_model
def pb_conv4(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3,
             img_size: int = 32, **_) -> nn.Module:
    return _conv_net((64, 64, 128, 128), num_classes, in_chans, img_size)


@register_model
def pb_conv6(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3,
             img_size: int = 32, **_) -> nn.Module:
    return _conv_net((64, 64, 128, 128, 256, 256), num_classes, in_chans, img_size)


@register_model
def pb_vgg19(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, **_) -> nn.Module:
    return kaiming_init(VGG(VGG19_CFG, num_classes, in_chans))


@register_model
def pb_resnet18(pretrained: bool = False, num_classes: int = 10, in_chans: int = 3,
                **_) -> nn.Module:
    # zero_init_last=False: every BatchNorm scale starts at 1, as in the baselines' CIFAR
    # ResNet18 (Synaptic-Flow Models/tinyimagenet_resnet.py). timm's default zero scale makes
    # SNIP's saliency exactly 0 for every block conv and silences every residual branch of a
    # frozen-weight method that never trains BatchNorm.
    model = ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans,
                   zero_init_last=False)
    model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as timm
    model.maxpool = nn.Identity()
    return model


def create_model(arch: str, num_classes: int, in_chans: int, img_size: int) -> nn.Module:
    """Build `arch` through timm's registry, with a clear error for unknown names."""
    if arch not in ARCHS:
        raise PrunebenchError(f"unknown arch {arch!r}; allowed: {', '.join(ARCHS)}")
    return timm.create_model(TIMM_PREFIX + arch, num_classes=num_classes, in_chans=in_chans,
                             img_size=img_size)
