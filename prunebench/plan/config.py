"""A run's full description: grid axes, training recipe and method options, resolved in layers.

Precedence, lowest first: `TrainConfig` defaults < the dataset/arch recipe (`recipe`) < a config
file's `train:` < `methods.<name>.train:` < the variant's `train:` (a grids block naming it) <
`key=value` overrides on the command line. Method options: `methods.<name>.options:` < the
variant's `options.<name>:` < `method.<option>=value` overrides.

Torch-free: the Snakemake process resolves every run of the grid with this module.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunebench import paths
from prunebench.errors import PrunebenchError
from prunebench.plan.catalogue import method_catalogue
from prunebench.plan.values import check_fields, coerce, option
from prunebench.plan.yamlfile import load_yaml

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet", "imagefolder")
ARCHS = ("conv2", "conv4", "conv6", "vgg19", "resnet18")  # built by prunebench/training/models.py
# Datasets that norm_stats=aslp applies to: ASLP normalises CIFAR-10 with the CIFAR mean and
# std (0.2023, 0.1994, 0.2010); its CIFAR-100 runs are not public (the values are inferred).
ASLP_STATS_DATASETS = ("cifar10", "cifar100")
# Image side of the datasets whose size is fixed (imagefolder's is known once prepared).
IMAGE_SIDES = {"digits": 8, "cifar10": 32, "cifar100": 32, "tinyimagenet": 64}
# Any timm model is an arch spelled `timm/<name>` (optionally `timm/<name>.<pretrained tag>`):
# the prefix keeps timm's names apart from the papers' networks (timm has its own resnet18).
TIMM_ARCH_PREFIX = "timm/"
TIMM_NAME_PATTERN = r"[a-z0-9_]+(\.[a-z0-9_]+)?"
ARCH_HELP = (f"{', '.join(ARCHS)}, or any timm model as timm/<name> (e.g. timm/convnext_atto, "
             "timm/vit_tiny_patch16_224, timm/efficientnet_b0, timm/resnet50)")
# A variant names a set of settings of one method; it becomes part of the run folder's name.
VARIANT_PATTERN = r"[a-z0-9][a-z0-9_-]*"


def arch_problem(arch: str) -> str | None:
    """Why `arch` is not an architecture name (torch-free: a timm name is checked for its
    spelling only; whether timm has it is checked when the model is built); None if it is."""
    if arch in ARCHS:
        return None
    if arch.startswith(TIMM_ARCH_PREFIX):
        if re.fullmatch(TIMM_NAME_PATTERN, arch[len(TIMM_ARCH_PREFIX):]):
            return None
        return (f"arch {arch!r} is not a timm model name: timm/ must be followed by a name of "
                "lower-case letters, digits and _ (and optionally .<pretrained tag>)")
    return f"unknown arch {arch!r}; allowed: {ARCH_HELP}"


@dataclass
class TrainConfig:
    """The training recipe shared by every method (the method's own tensors have own settings).
    Defaults live here only; `recipe()` changes some per dataset/arch."""

    epochs: int = option(20, "epochs of the method's main phase", bounds="[0, inf)")
    batch_size: int = option(128, "training mini-batch size", bounds="[1, inf)")
    optimizer: str = option("sgd", "optimiser of the weights", ("sgd", "adam"))
    lr: float = option(0.1, "learning rate of the weights", bounds="(0, inf)")
    momentum: float = option(0.9, "SGD momentum (Adam beta1) of the weights",
                             bounds="[0, 1)")
    nesterov: bool = option(False, "Nesterov momentum for the network's SGD (SynFlow: on; a "
                            "method's own tensors keep their own settings)")
    weight_decay: float = option(5e-4, "L2 weight decay (on the tensors of weight_decay_scope)",
                                 bounds="[0, inf)")
    weight_decay_scope: str = option(
        "weights", "network tensors that decay: weights (Conv/Linear weights only) or all "
        "(biases and norms too: SynFlow); a method's own tensors keep their own settings",
        ("weights", "all"))
    schedule: str = option("cosine", "lr schedule, stepped per optimiser step over each phase; "
                           "step: x0.1 at 50 % and 75 %; multistep: lr_drop_epochs",
                           ("cosine", "step", "multistep", "constant"))
    lr_drop_epochs: str = option("", "schedule=multistep: epochs of each phase after which the "
                                 "lr is multiplied by lr_drop_rate, e.g. 60,120 (SynFlow)")
    lr_drop_rate: float = option(0.1, "schedule=multistep: lr factor at each drop",
                                 bounds="(0, 1]")
    val_fraction: float = option(0.1, "training images held out, class-stratified, seeded "
                                 "(0: train on the whole training set)", bounds="[0, 1)")
    train_images: int = option(0, "train on a class-stratified, seeded subset of about this "
                               "many of the training images (0: all): quick checks only",
                               bounds="[0, inf)")
    selection: str = option("final", "which epoch's network is extracted and tested",
                            ("final", "val"))
    patience: int = option(0, "early stopping: epochs without a better val accuracy "
                           "(0 = off; ASLP 100)", bounds="[0, inf)")
    val_augment: bool = option(False, "validation images get the training crop and flip, "
                               "redrawn each epoch (ASLP validates on augmented images)")
    test_each_epoch: bool = option(False, "also test after every epoch (history "
                                   "epoch_test_top1, metrics test_top1_best_epoch): a "
                                   "diagnostic, never the headline nor used for selection")
    crop_padding: int = option(4, "random crop with this zero padding; 0 disables; at "
                               "most half the image side", bounds="[0, inf)")
    flip: bool = option(True, "random horizontal flip")
    normalize: bool = option(True, "per-channel mean/std normalisation (ASLP's "
                             "no-augmentation runs: off)")
    norm_stats: str = option("dataset", "statistics normalize uses: dataset (its published "
                             "mean/std) or aslp (CIFAR mean, std 0.2023, 0.1994, 0.2010, as "
                             "ASLP's data_modules.py)", ("dataset", "aslp"))
    amp: bool = option(True, "bf16 autocast in training and per-epoch validation, CUDA only "
                       "and only where the GPU has native bf16 (else fp32); reported accuracies "
                       "are always evaluated in fp32")
    channels_last: bool = option(True, "channels_last memory format, CUDA only")
    compile: bool = option(False, "torch.compile the model, CUDA only")
    deterministic: bool = option(False, "deterministic algorithms (torch."
                                 "use_deterministic_algorithms, cudnn.deterministic, "
                                 "CUBLAS_WORKSPACE_CONFIG): on CUDA a resumed run equals an "
                                 "uninterrupted one; off, cuDNN autotunes its kernels")
    checkpoint_every_s: float = option(60.0, "seconds at least between two end-of-epoch "
                                       "checkpoints (0: every epoch); phase ends and "
                                       "SIGTERM/SIGUSR1 always save one", bounds="[0, inf)")
    eval_batch_size: int = option(1024, "batch size of validation and test evaluation",
                                  bounds="[1, inf)")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    protocol_note: str = option("", "free text recorded with the run: which parts of a "
                                "reference protocol it follows are inferred, and why")
    exclude_layers: str = option(
        "none", "prunable layers left dense: the first and/or last Conv2d/Linear the input "
        "passes through", ("none", "first", "last", "first_last"))
    init_from: str = option(
        "", "a .safetensors state_dict loaded into the network before the method starts (a "
        "run's network.safetensors or your checkpoint); '' = the architecture's random init")
    init_adapt: str = option(
        "none", "none: the file must match the network key for key; timm: timm's pretrained "
        "weights of this timm/ model, adapted by timm (classifier dropped when the class count "
        "differs, input channels and position embeddings adapted)", ("none", "timm"))

    def drop_epochs(self) -> tuple[int, ...]:
        """`lr_drop_epochs` as epoch numbers (empty when unset); an error names a bad value."""
        text = str(self.lr_drop_epochs).strip()
        if not text:
            return ()
        if not re.fullmatch(r"[0-9]+(\s*,\s*[0-9]+)*", text):
            raise PrunebenchError(f"train config: lr_drop_epochs={self.lr_drop_epochs!r} must be "
                                  "epoch numbers separated by commas, e.g. 60,120")
        epochs = tuple(int(e) for e in text.split(","))
        if list(epochs) != sorted(set(epochs)) or epochs[0] < 1:
            raise PrunebenchError(f"train config: lr_drop_epochs={self.lr_drop_epochs!r} must "
                                  "be increasing epoch numbers >= 1")
        return epochs

    def validate(self) -> None:
        check_fields(self, "train config: ")
        checks = [
            (self.selection == "final" or self.val_fraction > 0,
             "selection=val needs val_fraction > 0"),
            (self.patience == 0 or self.selection == "val",
             "patience > 0 needs selection=val: early stopping tests the best-validation network"),
            (not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
             "nesterov=true needs optimizer=sgd and momentum > 0"),
            ((self.schedule == "multistep") == bool(self.drop_epochs()),
             "schedule=multistep needs lr_drop_epochs (e.g. 60,120), and lr_drop_epochs needs "
             "schedule=multistep"),
            (re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device) is not None,
             "device must be auto, cpu, cuda or cuda:N"),
            (not self.init_from or self.init_from.endswith(".safetensors"),
             f"init_from={self.init_from!r} must be a .safetensors file (a state_dict of "
             "tensors; pickled checkpoints are never loaded)"),
            (self.init_adapt == "none" or self.init_from,
             "init_adapt=timm adapts the weights of init_from: give init_from too"),
        ]
        for ok, message in checks:
            if not ok:
                raise PrunebenchError(f"train config: {message}")


def check_crop_padding(padding: int, side: int, dataset: str) -> None:
    """A random crop keeps at least half the image's rows and columns: more padding than half
    the side makes crops of mostly padding (and a huge one exhausts memory)."""
    if padding > side // 2:
        raise PrunebenchError(f"train config: crop_padding={padding} is more than half the "
                              f"{side}-pixel side of the {dataset} images; allowed: 0.."
                              f"{side // 2}")


def recipe(dataset: str, arch: str) -> dict[str, Any]:
    """Per-dataset/arch defaults where the papers are silent (recorded in every run)."""
    out: dict[str, Any] = {}
    if dataset == "digits":
        # 8x8 digits: no flip (digits are not mirror-symmetric), 1-pixel crop jitter, small batch
        # so the frozen-weight methods get enough optimizer steps (docs/methods/gumbel.md).
        out.update(epochs=20, batch_size=32, crop_padding=1, flip=False)
    elif dataset in ("cifar10", "cifar100"):
        out.update(epochs=160, batch_size=128, crop_padding=4)
    elif dataset == "tinyimagenet":
        out.update(epochs=100, batch_size=256, crop_padding=4)
    if arch.startswith("conv"):
        # No BatchNorm: SGD at 0.1 diverges on digits (dense stays at chance); 0.01 trains.
        out.update(lr=0.01)
    return out


def check_dataset(name: str) -> str:
    """`name` if it is a dataset the engine reads, else an error listing them (one check for
    the CLI's --dataset and every run's config)."""
    if name not in DATASETS:
        raise PrunebenchError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return name


def check_arch(name: str) -> str:
    """`name` if it is an architecture the engine builds, else an error listing them (one
    check for the CLI's --arch and every run's config)."""
    problem = arch_problem(name)
    if problem:
        raise PrunebenchError(problem)
    return name


@dataclass
class RunConfig:
    """Everything that determines one run's result."""

    dataset: str
    arch: str
    method: str
    sparsity: float | None = option(
        dataclasses.MISSING, "fraction of prunable weights removed; None: no budget",
        bounds="[0, 1)")
    # 32 bits: what every generator of the run takes (numpy's legacy seeding; torch takes 64)
    seed: int = option(dataclasses.MISSING, "seed of the run (init, data order, augmentation)",
                       bounds="[0, 4294967295]")
    variant: str = ""  # "" = the method's settings; else a grids block's named settings
    train: TrainConfig = field(default_factory=TrainConfig)
    method_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str = paths.DATA_DIR
    data_root: str = ""  # for imagefolder: the tree or archive to read

    def validate(self) -> None:
        check_dataset(self.dataset)
        check_arch(self.arch)
        check_fields(self, "")
        if self.dataset in IMAGE_SIDES:
            check_crop_padding(self.train.crop_padding, IMAGE_SIDES[self.dataset], self.dataset)
        if self.train.init_adapt == "timm" and not self.arch.startswith(TIMM_ARCH_PREFIX):
            raise PrunebenchError(f"init_adapt=timm needs a timm/ arch; {self.arch} is one of the "
                                  "papers' networks, which have no timm pretrained weights: use "
                                  "init_adapt=none")
        if self.variant and not re.fullmatch(VARIANT_PATTERN, self.variant):
            raise PrunebenchError(f"variant {self.variant!r} must match {VARIANT_PATTERN} "
                                  "(it names the run folder)")
        self.train.validate()
        if self.train.norm_stats == "aslp" and self.dataset not in ASLP_STATS_DATASETS:
            raise PrunebenchError(
                f"train config: norm_stats=aslp is ASLP's CIFAR statistics; dataset "
                f"{self.dataset} takes norm_stats=dataset (aslp: {', '.join(ASLP_STATS_DATASETS)})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of the whole config (paths.config_digest): a resumed run must match it."""
        return paths.config_digest(self.to_dict())


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`key=value` strings to a dict, with an error naming a malformed item."""
    out = {}
    for item in items:
        if "=" not in item:
            raise PrunebenchError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _apply_train(train: TrainConfig, values: dict[str, Any], where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key not in names:
            raise PrunebenchError(
                f"{where}: unknown train option {key!r}; allowed: {', '.join(sorted(names))}")
        setattr(train, key, coerce(value, names[key].type, f"{where}.{key}"))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML run/workflow config with the suite's one loader (plan/yamlfile.py: no
    duplicate keys, no alias bombs, UTF-8 only), naming the file on any error."""
    p = Path(path)
    if not p.is_file():
        raise PrunebenchError(f"config file {p} does not exist")
    data = load_yaml(p) or {}
    if not isinstance(data, dict):
        raise PrunebenchError(f"config file {p} must hold a mapping at the top level")
    return data


def variant_settings(file_config: dict[str, Any], method: str, variant: str
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `train:` and `options.<method>:` of the grids blocks that name `variant` and run
    `method`; every such block must give the same settings (the variant names one run folder)."""
    found = []
    for i, block in enumerate(file_config.get("grids") or []):
        if block.get("variant", "") == variant and method in (block.get("methods") or []):
            options = (block.get("options") or {}).get(method) or {}
            found.append((f"grids[{i}]", dict(block.get("train") or {}), dict(options)))
    if not found:
        raise PrunebenchError(
            f"variant {variant!r} of method {method} is defined by no grids block of the config "
            "(a block with `variant: NAME` that lists the method)")
    for where, train, options in found[1:]:
        if (train, options) != found[0][1:]:
            raise PrunebenchError(
                f"variant {variant!r} of method {method}: {where} gives other train/options than "
                f"{found[0][0]}; a variant names one set of settings (rename one of them)")
    return found[0][1], found[0][2]


def layered_settings(file_config: dict[str, Any], method: str, variant: str = ""
                     ) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """A method's train layers (where, values), lowest first, and its merged options, from a
    workflow or run config: top-level `train:` < `methods.<method>` < the variant's block."""
    section = (file_config.get("methods") or {}).get(method) or {}
    layers = [("config train", dict(file_config.get("train") or {})),
              (f"config methods.{method}.train", dict(section.get("train") or {}))]
    options = dict(section.get("options") or {})
    if variant:
        train, variant_options = variant_settings(file_config, method, variant)
        layers.append((f"config variant {variant}.train", train))
        options.update(variant_options)
    return layers, options


def resolve(dataset: str, arch: str, method: str, sparsity: float | None, seed: int,
            file_config: dict[str, Any] | None = None,
            overrides: dict[str, str] | None = None, variant: str = "") -> RunConfig:
    """Layer defaults, recipe, config file (and the variant's block) and overrides into one
    validated RunConfig; `python -m prunebench run` and the workflow's grid both call this.

    Overrides: `epochs=5` sets a train option; `method.<option>=v` a method option;
    `data_dir=...` / `data_root=...` the data locations. A `variant` without a config file that
    defines it is only the run's label: the overrides then carry its settings (the workflow's
    jobs pass every setting so).
    """
    file_config = file_config or {}
    train = TrainConfig()
    _apply_train(train, recipe(dataset, arch), "recipe")
    layers, options = layered_settings(file_config, method,
                                       variant if file_config else "")
    for where, values in layers:
        _apply_train(train, values, where)
    run = RunConfig(dataset, arch, method, sparsity, seed, variant, train, {})
    for key in ("data_dir", "data_root"):
        if key in file_config:
            setattr(run, key, coerce(file_config[key], "str", f"config {key}"))
    train_overrides = {}
    for key, value in (overrides or {}).items():
        if key.startswith("method."):
            options[key[len("method."):]] = value
        elif key in ("data_dir", "data_root"):
            setattr(run, key, value)
        else:
            train_overrides[key] = value
    _apply_train(train, train_overrides, "override")
    # Typed here, so a run resolved from a config file and the same run resolved from its
    # command line (strings) are one config, with one digest. A method registered outside the
    # plugin packages (a test's) is not in the catalogue: building it types its options.
    spec = method_catalogue().get(method)
    run.method_options = (spec.typed_options(options, f"method {method} options") if spec
                          else options)
    run.validate()
    return run
