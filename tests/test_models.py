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
    assert timm.models.model_entrypoint(f"pb_{arch}").__module__ == (
        "prunebench.training.models")


@pytest.mark.parametrize(("name", "module"), [("resnet18", "timm.models.resnet"),
                                              ("vgg19", "timm.models.vgg")])
def test_our_models_never_shadow_timms_own(name: str, module: str) -> None:
    """timm's `resnet18` / `vgg19` stay timm's (its module, the ImageNet stem). Mutation that
    defeated the old check (the name merely listed): registering a `resnet18` in models.py."""
    create_model("conv2", 10, 3, 32)  # our registrations are in place
    assert timm.models.model_entrypoint(name).__module__ == module
    model = timm.create_model(name, num_classes=10)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.kernel_size == ((7, 7) if name == "resnet18" else (3, 3))
    if name == "resnet18":
        assert first.stride == (2, 2) and isinstance(model.maxpool, torch.nn.MaxPool2d)


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


# -- timm models (`timm/<name>`) ------------------------------------------------------------------

def test_timm_arch_builds_timms_model_with_the_datasets_shape() -> None:
    """timm/resnet18 is timm's own ResNet-18 (7x7 stem), the papers' resnet18 keeps its CIFAR
    stem: the prefix keeps the two apart."""
    ours, theirs = create_model("resnet18", 10, 3, 32), create_model("timm/resnet18", 7, 1, 32)
    assert ours.conv1.kernel_size == (3, 3) and theirs.conv1.kernel_size == (7, 7)
    assert theirs.conv1.in_channels == 1 and theirs.fc.out_features == 7


def test_vit_takes_the_image_size() -> None:
    """A ViT is built for the dataset's image size (its position embeddings), not timm's 160."""
    model = create_model("timm/test_vit", 10, 1, 32).eval()
    assert model.patch_embed.grid_size == (2, 2)
    assert model.pos_embed.shape[1] == 4 + 1  # 2x2 patches and the class token
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_timm_resnet_starts_with_every_batchnorm_scale_at_one() -> None:
    """timm's ResNets zero the last BatchNorm scale of each block; built with zero_init_last off,
    like the papers' resnet18, every block passes a signal at init."""
    model = create_model("timm/test_resnet", 10, 3, 32)
    scales = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert scales and all(bool((w == 1).all()) for w in scales)


def test_prunable_set_covers_depthwise_attention_patch_embedding_and_head() -> None:
    """The prunable set is every Conv2d/Linear weight: the depthwise 7x7 convolutions of
    ConvNeXt (1 input channel per group), a ViT's patch embedding, qkv/proj and head."""
    convnext = create_model("timm/test_convnext", 10, 3, 32)
    depthwise = [m for _, m in prunable_layers(convnext)
                 if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 9 and all(m.weight.shape[1] == 1 for m in depthwise)
    vit = create_model("timm/test_vit", 10, 3, 32)
    names = [n for n, _ in prunable_layers(vit)]
    assert names[0] == "patch_embed.proj" and names[-1] == "head"
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1"} <= set(names)
    d = 64  # test_vit: width 64, 6 blocks, qkv 3d, mlp 3d, patch 16
    per_block = 3 * d * d + d * d + 2 * 3 * d * d
    assert num_prunable(vit) == 3 * 16 * 16 * d + 6 * per_block + d * 10


@pytest.mark.parametrize(("arch", "shape", "fragment"), [
    ("timm/test_vitt", (3, 32, 32), "has no model 'test_vitt' (close: timm/test_vit"),
    ("timm/Test-ViT", (3, 32, 32), "is not a timm model name"),
    ("timm/test_vit", (1, 8, 8), "cannot take 1x8x8 (CxHxW) images"),
    ("timm/test_convnext", (3, 16, 16), "cannot take 3x16x16 (CxHxW) images"),
])
def test_timm_errors_name_the_model_and_the_way_out(arch: str, shape: tuple[int, int, int],
                                                    fragment: str) -> None:
    with pytest.raises(PrunebenchError) as e:
        create_model(arch, 10, shape[0], shape[1])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_list_shows_how_to_name_timm_models(capsys: pytest.CaptureFixture[str]) -> None:
    from prunebench.cli import main

    assert main(["list"]) == 0
    assert "any timm model as timm/<name>, e.g. timm/convnext_atto" in capsys.readouterr().out
    assert main(["list", "--timm", "test_conv*"]) == 0
    assert capsys.readouterr().out.split() == ["timm/test_convnext", "timm/test_convnext2",
                                               "timm/test_convnext3"]


@pytest.mark.parametrize(("arch", "ok"), [
    ("conv4", True), ("timm/convnext_atto", True), ("timm/vit_tiny_patch16_224.augreg_in21k", True),
    ("resnet50", False), ("timm/", False), ("timm/ViT", False), ("timm/a/b", False),
])
def test_arch_names_are_checked_without_torch(arch: str, ok: bool) -> None:
    """The workflow's grid checks the spelling (timm's registry is asked when a run builds)."""
    from prunebench.plan.config import arch_problem

    assert (arch_problem(arch) is None) == ok


def test_macs_count_tokens_and_grouped_convolutions() -> None:
    """A ViT's Linear layers run once per token (2x2 patches + the class token on 32x32 images)
    and a depthwise convolution's weight holds one input channel per output: the MACs of the
    extracted network count both, and layers left dense by exclude_layers too."""
    from prunebench.training.masking import exclude_layers
    from prunebench.training.metrics import layer_macs

    vit = create_model("timm/test_vit", 10, 3, 32)
    exclude_layers(vit, "first_last", (3, 32, 32))
    macs = layer_macs(vit, (3, 32, 32), torch.device("cpu"))
    assert macs["blocks.0.attn.qkv"] == 5 * 192 * 64
    assert macs["patch_embed.proj"] == 4 * 64 * 3 * 16 * 16
    assert macs["head"] == 10 * 64  # the class token only
    convnext = create_model("timm/test_convnext", 10, 3, 32)
    macs = layer_macs(convnext, (3, 32, 32), torch.device("cpu"))
    assert macs["stages.0.blocks.0.conv_dw"] == 8 * 8 * 24 * 1 * 7 * 7  # 32/4 = 8x8 positions
    assert macs["stages.0.blocks.0.mlp.fc1"] == 8 * 8 * 96 * 24  # a Linear over every position
