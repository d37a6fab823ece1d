"""Every method on every architecture starts with a live network: after `prepare`, each
prunable layer gets a non-zero training signal on a real batch, and no residual branch or VGG
block is dead (perturbing its weights changes the output). The architectures are the papers'
five and timm's tiny test models (ResNet, ConvNeXt, EfficientNet, ViT) on 32x32 images.

Pins the resnet18 BatchNorm fix (docs/methods/index.md, "ResNet-18's BatchNorm scales"): with
timm's zero-initialised last BN scale, SNIP's saliency and the frozen-weight methods' gradients
are exactly 0 for every block convolution.
"""
from __future__ import annotations

import pytest
import torch
from conftest import TIMM_TEST_ARCHS
from torch import nn

from prunebench.data.prepared import DeviceData, load_prepared
from prunebench.training.masking import prunable_layers, stored_weight
from prunebench.training.method import MethodContext, TrainSettings
from prunebench.training.models import ARCHS, create_model
from prunebench.training.registry import get_method, list_methods

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(digits_dir) -> DeviceData:
    return DeviceData(load_prepared("digits", digits_dir), CPU, 0.1)


@pytest.fixture(scope="module")
def small_data(small_images_dir) -> DeviceData:
    return DeviceData(load_prepared("imagefolder", small_images_dir), CPU, 0.1)


def data_for(arch: str, request: pytest.FixtureRequest) -> DeviceData:
    """digits (8x8) for the papers' networks, the 32x32 digit images for timm's."""
    return request.getfixturevalue("small_data" if arch in TIMM_TEST_ARCHS else "data")


def prepared(method: str, arch: str, data: DeviceData, sparsity: float = 0.5):
    """A model of `arch` with `method` prepared on it, as the engine does before training."""
    torch.manual_seed(0)
    x, _ = next(data.eval_batches("test", 1))
    model = create_model(arch, 10, x.shape[1], x.shape[2])
    cls = get_method(method)
    budgeted = cls(cls.hparams_cls(), None).is_budgeted()

    def sample(per_class, batch):
        return data.balanced_batches(per_class, batch, torch.Generator().manual_seed(0))

    ctx = MethodContext(sparsity=sparsity if budgeted else None, num_classes=10, device=CPU,
                        seed=0, train=TrainSettings(1, 0.01, 0.9, 5e-4, "sgd"),
                        sample_batches=sample)
    m = cls(cls.hparams_cls(), ctx)
    m.prepare(model)
    return model, m


def layer_signal(layer: nn.Module) -> float:
    """Largest |gradient| over the layer's own trainable tensors (weight, logits, scores, t)."""
    return max((float(p.grad.abs().max()) for p in layer.parameters()
                if p.requires_grad and p.grad is not None), default=0.0)


def dead_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Prunable layers whose weights do not move the output (eval mode): the gradient of a random
    projection of the output with respect to the layer's stored weight is exactly zero, i.e.
    perturbing those weights changes nothing to first order (one backward pass for all)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    weights = {name: stored_weight(layer) for name, layer in prunable_layers(model)}
    for w in weights.values():
        w.grad = None
        w.requires_grad_(True)
    out = model(x)
    (out * torch.randn_like(out)).sum().backward()
    return [name for name, w in weights.items() if w.grad is None or not bool(w.grad.any())]


def _sweep() -> list:
    """Every method on every architecture. The big networks' other cases are the slow tier's
    (each prepares on 11-20 M weights, e.g. a global top-k: seconds apiece); the fast tier keeps
    each network's dense start and resnet18 under every frozen-weight method, which its
    BatchNorm fix is about (SNIP's side: test_snip_saliency_is_nonzero_in_every_resnet_block)."""
    def slow(method: str, arch: str) -> bool:
        return (method != "dense" and (arch == "vgg19" or (
            arch == "resnet18" and not get_method(method).frozen_weights)))

    return [pytest.param(method, arch, marks=[pytest.mark.slow] if slow(method, arch) else [])
            for arch in [*ARCHS, *TIMM_TEST_ARCHS] for method in list_methods()]


@pytest.mark.parametrize(("method", "arch"), _sweep())
def test_every_layer_gets_a_training_signal_and_no_block_is_dead(method: str, arch: str,
                                                                   request) -> None:
    data = data_for(arch, request)
    model, m = prepared(method, arch, data)
    phase = m.phases()[0]
    trainable = {id(p) for g in m.param_groups(model, phase) for p in g.params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    model.train()
    x, y = next(data.balanced_batches(10, 100, torch.Generator().manual_seed(1)))
    loss = nn.functional.cross_entropy(model(x), y)
    reg = m.regularizer(model)
    (loss if reg is None else loss + reg).backward()
    silent = [name for name, layer in prunable_layers(model) if layer_signal(layer) == 0.0]
    assert not silent, f"{method} on {arch}: no gradient reaches {silent}"
    if arch in ("vgg19", "resnet18", *TIMM_TEST_ARCHS):  # blocks and residual branches
        dead = dead_layers(model, x)
        assert not dead, f"{method} on {arch}: perturbing {dead} leaves the output unchanged"


def test_snip_saliency_is_nonzero_in_every_resnet_block(data) -> None:
    _, m = prepared("snip", "resnet18", data, sparsity=0.9)
    zero = [i for i, s in enumerate(m.scores) if float(s.sum()) == 0.0]
    assert not zero, f"snip saliency is exactly 0 in prunable layers {zero}"


FROZEN = [m for m in list_methods() if get_method(m).frozen_weights]


@pytest.mark.parametrize("method", FROZEN)
def test_frozen_weight_methods_fix_norms_and_layer_scales(method: str, small_data) -> None:
    """As on the papers' networks, a frozen network's norms stay at affine (1, 0); ConvNeXt's
    layer scales (1e-6 at init, which would silence every frozen residual branch) go to 1."""
    model, _ = prepared(method, "timm/test_convnext", small_data)
    gammas = [p for n, p in model.named_parameters() if n.endswith("gamma")]
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(gammas) == 9 and all(bool((g == 1).all()) for g in gammas)
    assert norms and all(bool((m.weight == 1).all()) and bool((m.bias == 0).all())
                         for m in norms)


@pytest.mark.parametrize("method", list_methods())
def test_layers_left_dense_are_untouched_by_every_method(method: str, small_data) -> None:
    """exclude_layers=first_last: no method attaches anything to the patch embedding and head
    of a ViT or re-initialises them (signed constant, frozen-weight re-draws, random biases)."""
    from prunebench.training.masking import exclude_layers, weight_layers
    from prunebench.training.registry import get_method

    torch.manual_seed(0)
    model = create_model("timm/test_vit", 10, 1, 32)
    assert exclude_layers(model, "first_last", (1, 32, 32)) == ["patch_embed.proj", "head"]
    before = {n: {k: v.clone() for k, v in m.state_dict().items()}
              for n, m in weight_layers(model) if n in ("patch_embed.proj", "head")}
    cls = get_method(method)
    options = {"frozen_bias": True} if "frozen_bias" in cls.hparams_cls.__dataclass_fields__ \
        else {}
    budgeted = cls(cls.hparams_cls(**options), None).is_budgeted()
    ctx = MethodContext(sparsity=0.5 if budgeted else None, num_classes=10, device=CPU, seed=0,
                        train=TrainSettings(1, 0.01, 0.9, 5e-4, "sgd"),
                        sample_batches=lambda per_class, batch: small_data.balanced_batches(
                            per_class, batch, torch.Generator().manual_seed(0)))
    cls(cls.hparams_cls(**options), ctx).prepare(model)
    layers = dict(weight_layers(model))
    for name, state in before.items():
        assert not hasattr(layers[name], "parametrizations"), name
        after = layers[name].state_dict()
        assert set(after) == set(state) and all(torch.equal(after[k], v)
                                                for k, v in state.items()), name
