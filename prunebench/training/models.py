"""The suite's architectures: the papers' five, registered in timm's registry as `pb_<arch>`
(never shadowing timm's own resnet18 or vgg19), and any timm model, spelled `timm/<name>`.

conv2/conv4/conv6 follow the Lottery Ticket conv nets (Frankle & Carbin 2019): 3x3 convs, no
bias, ReLU, 2x2 max-pool after each pair, FC 256-256-classes. vgg19 is the CIFAR VGG with
BatchNorm and global average pooling. resnet18 is timm's ResNet-18 with the CIFAR stem
(3x3 stride-1 conv, no max-pool, initialised like timm's other convs) and every BatchNorm scale
at 1. Every net accepts any input size and channel count; pools use
ceil_mode so 8x8 `digits` images survive four halvings.

A timm model is built with the dataset's classes and channels, its image size where the model
takes `img_size` (ViTs), and every residual block's last normalisation scale at 1 where it takes
`zero_init_last` (timm's ResNets zero it; like resnet18 above, so SNIP's saliency and the
frozen-weight methods' signal reach every block). Pretrained timm weights come only from a file
the user gives (`init_from`, `init_adapt=timm`): nothing is downloaded.
"""
from __future__ import annotations

import difflib

import timm
import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

from prunebench.data.archives import one_line
from prunebench.errors import PrunebenchError
from prunebench.plan.config import ARCHS, TIMM_ARCH_PREFIX, arch_problem

TIMM_PREFIX = "pb_"
# Keyword arguments a timm model gets when its constructor takes them (see the docstring).
TIMM_OPTIONAL_KWARGS = ("img_size", "zero_init_last")


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


def timm_name(arch: str) -> str:
    """The name timm's registry builds `arch` under: `pb_conv4`, or what follows `timm/`."""
    return arch[len(TIMM_ARCH_PREFIX):] if arch.startswith(TIMM_ARCH_PREFIX) else TIMM_PREFIX + arch


def create_model(arch: str, num_classes: int, in_chans: int, img_size: int,
                 pretrained: dict[str, torch.Tensor] | None = None,
                 pretrained_from: str = "") -> nn.Module:
    """Build `arch` for `num_classes` classes and `in_chans` x `img_size` x `img_size` images,
    with a clear error for unknown names and inputs the model cannot take. `pretrained`: timm's
    pretrained state_dict of this timm model (read from the file `pretrained_from`), adapted
    by timm's own checkpoint filter; its classifier is replaced when the class count differs."""
    problem = arch_problem(arch)
    if problem:
        raise PrunebenchError(problem)
    if arch in ARCHS:
        return timm.create_model(TIMM_PREFIX + arch, num_classes=num_classes, in_chans=in_chans,
                                 img_size=img_size)
    model = _create_timm(arch, num_classes, in_chans, img_size, pretrained, pretrained_from)
    _check_input(model, arch, (in_chans, img_size, img_size))
    return model


def check_known(arch: str) -> None:
    """Refuse an arch no registry builds (a timm name timm does not know, with the closest)."""
    problem = arch_problem(arch)
    if problem:
        raise PrunebenchError(problem)
    name = timm_name(arch)
    if arch not in ARCHS and not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
        raise PrunebenchError(
            f"arch {arch}: timm {timm.__version__} has no model {name!r}"
            + (f" (close: {', '.join(TIMM_ARCH_PREFIX + c for c in close)})" if close else "")
            + "; `prunebench list --timm PATTERN` lists timm's model names")


def _create_timm(arch: str, num_classes: int, in_chans: int, img_size: int,
                 pretrained: dict[str, torch.Tensor] | None, pretrained_from: str) -> nn.Module:
    check_known(arch)
    name = timm_name(arch)
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans}
    if pretrained is not None:
        # timm loads the given state_dict strictly (never a download: no url, file or hub id)
        # with the pretrained head; the dataset's classifier replaces it below.
        cfg = timm.models.get_pretrained_cfg(name)
        kwargs.update(pretrained=True, num_classes=cfg.num_classes if cfg else num_classes,
                      pretrained_cfg_overlay={"state_dict": pretrained, "source": "", "url": "",
                                              "file": None, "hf_hub_id": None})
    optional = {"img_size": img_size, "zero_init_last": False}
    while True:
        try:
            model = timm.create_model(name, **kwargs, **optional)
            break
        except Exception as e:  # noqa: BLE001 - timm's filters raise anything on a bad file
            refused = [k for k in optional if f"unexpected keyword argument '{k}'" in str(e)]
            if isinstance(e, TypeError) and refused:
                del optional[refused[0]]
                continue
            if pretrained is None:
                raise
            raise PrunebenchError(
                f"init_from={pretrained_from} (init_adapt=timm) does not fit timm model {name} "
                f"({in_chans} channels, image size {img_size}): {type(e).__name__}: "
                f"{one_line(e)[:1500]}") from None
    if pretrained is not None and kwargs["num_classes"] != num_classes:
        model.reset_classifier(num_classes)
    return model


@torch.no_grad()
def _check_input(model: nn.Module, arch: str, shape: tuple[int, int, int]) -> None:
    """One eval-mode forward of a zero image: a model that cannot take the dataset's images
    (too small for its strides, not a multiple of its patch size) says so before training."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *shape))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise PrunebenchError(
            f"arch {arch} cannot take {'x'.join(map(str, shape))} (CxHxW) images: "
            f"{one_line(e)[:300]}; prepare the dataset at another image size (imagefolder: "
            "--image-size) or choose another model") from None
    finally:
        model.train(was_training)


def timm_model_names(pattern: str = "*") -> list[str]:
    """timm's model names matching a shell-style pattern, as `timm/<name>` archs."""
    return [TIMM_ARCH_PREFIX + n for n in timm.list_models(pattern)]
