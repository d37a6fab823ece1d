"""A run's network before its method starts: the architecture built for the dataset, its starting
weights (`init_from`: a `.safetensors` state_dict, never a pickle) and the layers left out of the
prunable set (`exclude_layers`). What the run started from is recorded in its metrics."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from prunebench.errors import PrunebenchError
from prunebench.fileio import sha256_file
from prunebench.plan.config import TrainConfig
from prunebench.training.masking import EXCLUDED, exclude_layers
from prunebench.training.method import PruningMethod
from prunebench.training.models import check_known, create_model

# Keys a checkpoint may lack without changing the network (BatchNorm's step counter).
OPTIONAL_KEYS = ("num_batches_tracked",)
LISTED = 8  # keys named per kind in a mismatch error


@dataclass
class InitialWeights:
    """The tensors of an `init_from` file, read once per run, and what identifies the file."""

    path: str
    sha256: str
    adapt: str  # "none": key for key; "timm": timm's pretrained weights, adapted by timm
    state: dict[str, torch.Tensor]


def check_inputs(arch: str, train: TrainConfig) -> None:
    """What a run builds its network from exists: the arch in its registry, the init_from
    file (checked before the run folder is touched, as the dataset is)."""
    check_known(arch)
    if train.init_from and not Path(train.init_from).is_file():
        raise PrunebenchError(f"init_from={train.init_from}: no such file")


def read_initial_weights(train: TrainConfig) -> InitialWeights | None:
    """The run's `init_from` file as tensors (safetensors: no code runs), or None without one."""
    if not train.init_from:
        return None
    path = Path(train.init_from)
    if not path.is_file():
        raise PrunebenchError(f"init_from={train.init_from}: no such file")
    try:
        state = load_file(path)
    except (OSError, SafetensorError) as e:
        raise PrunebenchError(f"init_from={train.init_from} is not a readable .safetensors "
                              f"file: {e}") from None
    return InitialWeights(train.init_from, sha256_file(path), train.init_adapt, state)


def build_network(arch: str, num_classes: int, image_shape: tuple[int, int, int],
                  initial: InitialWeights | None, exclude: str) -> nn.Module:
    """`arch` for the dataset, with the starting weights of `initial` (else its random init,
    drawn from torch's global generator) and `exclude` (TrainConfig.exclude_layers) applied."""
    c, h, _ = image_shape
    if initial is not None and initial.adapt == "timm":
        model = create_model(arch, num_classes, c, h, pretrained=initial.state,
                             pretrained_from=initial.path)
    else:
        model = create_model(arch, num_classes, c, h)
        if initial is not None:
            load_exact(model, initial, f"{arch} built for {num_classes} classes and "
                                       f"{'x'.join(map(str, image_shape))} images")
    exclude_layers(model, exclude, image_shape)
    return model


def load_exact(model: nn.Module, initial: InitialWeights, what: str) -> None:
    """Copy `initial`'s tensors into `model`, refusing a file that does not fit key for key,
    naming the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    state = initial.state
    missing = [k for k in own if k not in state and not k.endswith(OPTIONAL_KEYS)]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k} (file {_shape(state[k])}, network {_shape(own[k])})"
                 for k in own if k in state and state[k].shape != own[k].shape]
    problems = [f"{len(keys)} {kind}: {', '.join(keys[:LISTED])}"
                + (", ..." if len(keys) > LISTED else "")
                for kind, keys in (("missing", missing), ("unexpected", unexpected),
                                   ("mis-shaped", misshaped)) if keys]
    if problems:
        raise PrunebenchError(
            f"init_from={initial.path} does not fit {what}: {'; '.join(problems)}. The file "
            "must be a state_dict of this very network (a run's network.safetensors of the same "
            "arch and dataset); for timm's pretrained weights of a timm/ model, set "
            "init_adapt=timm")
    model.load_state_dict(state, strict=False)  # checked above; optional keys may be absent


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def refuse_discarded_start(method: PruningMethod, initial: InitialWeights | None,
                           arch: str) -> None:
    """A method that re-draws the network's weights at its start would silently throw the
    `init_from` weights away: refuse, naming the method, the model and the option to set."""
    if initial is not None and method.redraws_weights():
        raise PrunebenchError(
            f"method {method.name} on {arch} re-draws the frozen random weights it learns a "
            f"mask over, which would discard init_from={initial.path}; set "
            "method.keep_weights=true to learn its mask over the loaded weights")


def start_record(initial: InitialWeights | None, model: nn.Module) -> dict[str, Any]:
    """What the run started from, for metrics.json: the init file's sha256 (its path is the
    recorded setting train_init_from) and the layers left dense."""
    return {"init_from_sha256": initial.sha256 if initial else None,
            "excluded_layers": ";".join(getattr(model, EXCLUDED, ()))}
