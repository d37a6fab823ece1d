"""One run from config to finished folder: resume or start, train, extract, measure, write.

Folder contents (names in prunebench/paths.py): config.json (written first), log.txt,
checkpoint.pt (per epoch, atomic), network.safetensors + masks.safetensors (the pruned
network, prunebench/training/artifact.py), history.csv, layers.csv, and metrics.json written last:
its presence means the run finished. A failed run leaves failed.json instead.

Faults: one process at a time writes a folder (an flock on `.lock`); a run killed anywhere is
rerun with the same command and ends with the result of an uninterrupted run. Temp folders
left by a kill inside an atomic write are removed at the next start, a checkpoint that cannot
be loaded or belongs to another config is ignored (the run starts afresh: same result, more
time), and SIGTERM/SIGUSR1 outside the training loop also exit 75 (Preempted).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunebench import console, paths, provenance
from prunebench.data.archives import one_line
from prunebench.data.prepared import (
    PROVENANCE_KEYS,
    DeviceData,
    PreparedData,
    check_split,
    load_prepared,
    normalization_stats,
)
from prunebench.errors import Preempted, PrunebenchError, TrainingDiverged, os_error_text
from prunebench.fileio import remove_stale_temps, save_torch, sha256_file, write_csv, write_json
from prunebench.plan.config import RunConfig, check_crop_padding
from prunebench.training import cuda, gpus
from prunebench.training.artifact import save_network
from prunebench.training.masking import budget_count, fold, layer_densities, num_prunable
from prunebench.training.method import MethodContext, PruningMethod, TrainSettings
from prunebench.training.metrics import count_params, evaluate, layer_macs
from prunebench.training.network import (
    InitialWeights,
    build_network,
    check_inputs,
    read_initial_weights,
    refuse_discarded_start,
    start_record,
)
from prunebench.training.registry import get_method
from prunebench.training.train import (
    PREEMPT_SIGNALS,
    LoopState,
    Trainer,
    best_epoch_test,
    epoch_seed,
)

# The epoch number that seeds the extracted network's (augmented) validation pass.
EXTRACTED_EPOCH = 1_000_001


def resolve_device(name: str) -> torch.device:
    """The run's device. `cuda` (what a workflow job that requests a GPU runs with) and `auto`
    first check, without starting CUDA, that it can work, then claim a device slot where there
    are several (training/cuda.py) and start it; `cuda` and `cuda:N` never fall back to the
    CPU, `auto` uses the CPU when CUDA is not usable (giving its slot back). Under the test-only
    switch a `cpu` run claims a slot as a GPU run would."""
    if name == "cpu":
        if cuda.forced_backend() is not None:
            cuda.claim_slot()
        return torch.device("cpu")
    problem = cuda.preinit_problem()
    if problem is None:
        if name in ("auto", "cuda"):
            cuda.claim_slot()
        problem = cuda.cuda_problem()
    if name == "auto":
        if problem:
            gpus.release()
            if gpus.visible_devices():
                print(f"prunebench: device=auto runs on the CPU: {problem}", file=sys.stderr)
        return torch.device("cpu" if problem else "cuda")
    if problem:
        raise PrunebenchError(f"device={name} requested but CUDA is not usable here: {problem}. "
                              "Use device=cpu to run on the CPU")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise PrunebenchError(f"device={name} requested but this process sees "
                              f"{torch.cuda.device_count()} CUDA device(s), numbered from 0")
    return device


def environment(device: torch.device) -> dict[str, Any]:
    import timm

    return {
        **provenance.current().record(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "timm_version": timm.__version__,
        "device": str(device),
        "device_name": cuda.device_name(device),
        "device_slot": gpus.held(),
        "hostname": platform.node(),
        "num_threads": torch.get_num_threads(),
    }


class _LogFile(logging.FileHandler):
    """The run's log.txt. A write that fails (a full disk) is said once on stderr in one line,
    not with logging's traceback at every record; the log goes on on stderr."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not self.failed:
            self.failed = True
            print(f"prunebench: cannot write {self.baseFilename}: "
                  f"{os_error_text(sys.exc_info()[1] or OSError())}; logging to stderr only",
                  file=sys.stderr)


def _make_logger(run_dir: Path) -> logging.Logger:
    logger = logging.getLogger(f"prunebench.training.run.{run_dir}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
        fh = _LogFile(run_dir / paths.LOG)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        sh.setLevel(logging.WARNING if console.is_quiet() else logging.INFO)  # --quiet
        logger.addHandler(sh)
    return logger


def build_method(cfg: RunConfig, data: DeviceData, device: torch.device) -> PruningMethod:
    cls = get_method(cfg.method)
    hp = cls.hparams_cls.from_dict(cfg.method_options, f"method {cfg.method} options")
    t = cfg.train
    ctx = MethodContext(
        sparsity=cfg.sparsity, num_classes=data.num_classes, device=device, seed=cfg.seed,
        train=TrainSettings(t.epochs, t.lr, t.momentum, t.weight_decay, t.optimizer,
                            t.nesterov, t.weight_decay_scope),
        sample_batches=lambda per_class, batch: data.balanced_batches(
            per_class, batch, torch.Generator(device=device).manual_seed(cfg.seed)),
        scoring_batches=lambda count, batch, balanced, augment: data.scoring_batches(
            count, batch, torch.Generator(device=device).manual_seed(cfg.seed), balanced,
            t.crop_padding if augment else 0, t.flip and augment),
        # a figure the method reports (soft accuracies, sampled masks): fp32, like the test's
        evaluate=lambda model, split: evaluate(
            model, data.eval_batches(split, t.eval_batch_size, channels_last=False), False),
        recipe={"dataset": cfg.dataset, "arch": cfg.arch, "seed": cfg.seed,
                **{f"train_{k}": v for k, v in cfg.train.__dict__.items()}},
    )
    method = cls(hp, ctx)
    if method.is_budgeted() and cfg.sparsity is None:
        raise PrunebenchError(f"method {cfg.method} needs --sparsity: a budget in [0, 1)")
    if not method.is_budgeted() and cfg.sparsity is not None:
        raise PrunebenchError(
            f"method {cfg.method} takes no --sparsity with these options (its sparsity is "
            "emergent or zero); omit it, or switch on the method's budget option if it has one")
    return method


def check_settings_fit(cfg: RunConfig, prepared: PreparedData) -> None:
    """The settings that only the prepared data can judge (its image size, its class sizes),
    checked before the run folder exists."""
    check_crop_padding(cfg.train.crop_padding, min(prepared.image_shape[1:]), cfg.dataset)
    check_split(prepared.tensors["train_y"].numpy(), cfg.train.val_fraction,
                "train config: val_fraction", need_val=cfg.train.selection == "val")


def check_folder(run_dir: Path, cfg: RunConfig) -> str:
    """'new', 'resume' or 'done'; refuses a folder that holds a different config."""
    config_path = run_dir / paths.CONFIG
    finished = (run_dir / paths.METRICS).exists()
    try:
        saved = json.loads(config_path.read_text())
        if not isinstance(saved, dict):
            raise ValueError(f"it holds a {type(saved).__name__}")
    except (OSError, ValueError) as e:  # missing, unreadable, not JSON, not UTF-8
        if finished:  # a finished result is never replaced, least of all by a guess
            raise PrunebenchError(
                f"run folder {run_dir} holds a finished run ({paths.METRICS}) but its "
                f"{paths.CONFIG} is {'missing' if not config_path.exists() else 'unreadable'} "
                f"({one_line(e)[:120]}), so nothing says which config it ran; it is never "
                "overwritten: restore the file, or move the folder away to rerun") from None
        return "new"
    if saved.get("digest") != cfg.digest():
        ours = _flatten(cfg.to_dict())
        theirs = _flatten(saved.get("config", {}))
        diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        raise PrunebenchError(
            f"run folder {run_dir} holds a run with a different config (differs in: "
            f"{', '.join(diff) or 'unknown'}); delete the folder or choose another --out")
    return "done" if finished else "resume"


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A finished run's metrics.json, or a one-line error naming it (it is never rewritten)."""
    path = run_dir / paths.METRICS
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PrunebenchError(f"{path} cannot be read ({one_line(e)[:120]}); a finished run's "
                              "result is never rewritten: restore it, or move the folder away "
                              "to rerun") from None
    if not isinstance(metrics, dict):
        raise PrunebenchError(f"{path} holds a {type(metrics).__name__}, not a run's metrics")
    return metrics


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}_"))
        else:
            out[f"{prefix}{k}"] = v
    return out


# How long a run waits for its folder's lock before giving up: on NFS, the lock of a process on
# a node that crashed outlives it until the server's lease expires (90 s by default).
LOCK_WAIT_SECONDS = 120.0


@contextmanager
def folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on `run_dir/.lock` (freed by the kernel even on SIGKILL); refuse
    a folder another process holds. Filesystems without locks are used unlocked."""
    fd = os.open(run_dir / paths.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                raise PrunebenchError(
                    f"run folder {run_dir} is in use by another prunebench process ({holder}); "
                    "wait for it to end or stop it, then rerun") from None
            except OSError:
                break  # no flock on this filesystem: the workflow runs one job per folder
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}\n".encode(), 0)
            break
        yield
    finally:
        os.close(fd)


@contextmanager
def preempt_outside_training() -> Iterator[None]:
    """SIGTERM/SIGUSR1 raise Preempted (exit 75) anywhere in a run; the training loop installs
    its own handler, which checkpoints first. Outside it the last checkpoint is kept as is."""
    def handle(signum: int, _frame: Any) -> None:
        raise Preempted(f"signal {signum} received outside the training loop; the last "
                        "checkpoint is kept")

    old = {s: signal.signal(s, handle) for s in PREEMPT_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def changed_inputs(cfg: RunConfig, metrics: dict[str, Any]) -> list[str]:
    """What a finished run was computed from that differs from its inputs now: the prepared
    data's provenance (another archive, image size or resize) and the init_from file's bytes.
    Inputs that are gone are not a difference: a finished run stands without them."""
    changed = []
    manifest_path = paths.dataset_manifest(cfg.data_dir, cfg.dataset)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict):
        changed += [f"{k} ({metrics.get(k)!r} -> {manifest.get(k)!r}, {manifest_path})"
                    for k in PROVENANCE_KEYS if k in metrics and metrics[k] != manifest.get(k)]
    init = Path(cfg.train.init_from) if cfg.train.init_from else None
    if init is not None and init.is_file() and metrics.get("init_from_sha256") not in (
            None, sha256_file(init)):
        changed.append(f"init_from {init} (its sha256 is no longer the recorded "
                       f"{str(metrics['init_from_sha256'])[:12]}...)")
    return changed


def finished_metrics(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """A finished run's metrics, refused when its inputs changed since: returning them would
    label a result computed from other data or weights as this config's (it is never
    replaced either: the user moves it away)."""
    metrics = read_metrics(run_dir)
    changed = changed_inputs(cfg, metrics)
    if changed:
        raise PrunebenchError(
            f"run folder {run_dir} holds a finished run computed from other inputs than this "
            f"config's now: {'; '.join(changed)}; a finished result is never replaced: move "
            "the folder away to rerun on the new inputs, or restore the old ones")
    return metrics


def execute(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Run (or resume, or skip when finished) one config into `run_dir`; return its metrics."""
    state = check_folder(run_dir, cfg)
    if state == "done" and not (run_dir / paths.CHECKPOINT).exists():
        return finished_metrics(cfg, run_dir)
    wall0 = time.perf_counter()
    with preempt_outside_training():
        # Missing or corrupt data and a missing device stop here, before the folder is touched.
        device = resolve_device(cfg.train.device)
        prepared = load_prepared(cfg.dataset, cfg.data_dir)
        check_settings_fit(cfg, prepared)
        check_inputs(cfg.arch, cfg.train)
        run_dir.mkdir(parents=True, exist_ok=True)
        with folder_lock(run_dir):
            state = check_folder(run_dir, cfg)  # again: another process may have finished it
            stale = remove_stale_temps(run_dir)
            if state == "done":  # killed after metrics.json was written: finish the cleanup
                (run_dir / paths.CHECKPOINT).unlink(missing_ok=True)
                return finished_metrics(cfg, run_dir)
            accel = cuda.accel_for(cfg.train, device)
            try:
                with cuda.applied(accel):
                    return _train_and_measure(cfg, run_dir, state, stale, device, prepared,
                                              wall0, accel)
            except Preempted as e:
                _make_logger(run_dir).info(f"preempted: {e}")
                raise


def _train_and_measure(cfg: RunConfig, run_dir: Path, state: str, stale: list[Path],
                       device: torch.device, prepared: PreparedData, wall0: float,
                       accel: cuda.Accel) -> dict[str, Any]:
    """Build or resume, train, measure, write: the folder's one writer (its lock held)."""
    (run_dir / paths.FAILED).unlink(missing_ok=True)
    write_json(run_dir / paths.CONFIG, {"digest": cfg.digest(), "config": cfg.to_dict()})
    logger = _make_logger(run_dir)
    log = logger.info
    for p in stale:
        log(f"removed {p.name}, a temp folder left by a process killed while writing")
    built = build_or_resume(cfg, run_dir, state, device, prepared, log, accel)
    record = accel.record()
    log(f"run {cfg.dataset}/{cfg.arch}/{cfg.method} sparsity={cfg.sparsity} seed={cfg.seed} "
        f"on {device} ({cuda.device_name(device)}): {record['precision']} training, "
        f"channels_last={accel.channels_last}, compile={accel.compile_backend or 'off'}, "
        f"deterministic={accel.deterministic}, cudnn.benchmark={accel.cudnn_benchmark}"
        f"{f'; {accel.note}' if accel.note else ''}")
    try:
        loop = built.trainer.run()
    except TrainingDiverged as e:
        write_json(run_dir / paths.FAILED, {"reason": str(e), "config": cfg.to_dict(),
                                            "history": built.trainer.state.history})
        log(f"FAILED: {e}")
        raise
    measured = measure(cfg, built, loop, prepared, device, wall0, run_dir)
    write(run_dir, cfg, built, measured, prepared)
    metrics = measured.metrics
    log(f"done: test_top1={metrics['test_top1']:.2f} sparsity={metrics['sparsity_achieved']:.4f} "
        f"collapsed={metrics['num_layers_collapsed']}")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    return metrics


@dataclass
class Built:
    """A run's parts as training needs them: the device-resident data, the model, its method
    and the trainer that checkpoints into the run folder."""

    data: DeviceData
    model: nn.Module
    method: PruningMethod
    trainer: Trainer
    initial: InitialWeights | None  # the init_from weights the model started from


def build(cfg: RunConfig, data: DeviceData, device: torch.device, prepared: PreparedData,
          ckpt_path: Path, log: Callable[[str], None], initial: InitialWeights | None,
          accel: cuda.Accel) -> Built:
    """A fresh model (seeded; `initial`'s weights, if any), its method (prepared) and a trainer
    saving to `ckpt_path`."""
    digest = cfg.digest()
    torch.manual_seed(cfg.seed)
    model = build_network(cfg.arch, data.num_classes, prepared.image_shape, initial,
                          cfg.train.exclude_layers).to(device)
    if data.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(cfg, data, device)
    refuse_discarded_start(method, initial, cfg.arch)
    method.prepare(model)
    trainer = Trainer(model, method, data, cfg.train, cfg.seed, device, log=log, accel=accel,
                      save=lambda ckpt: save_torch(ckpt_path, {**ckpt, "config_digest": digest}))
    return Built(data, model, method, trainer, initial)


def input_stats(cfg: RunConfig, prepared: PreparedData) -> tuple[list[float], list[float]]:
    """The mean and std the run normalises its inputs with (`normalize`, `norm_stats`)."""
    return normalization_stats(prepared.manifest, cfg.train.normalize, cfg.train.norm_stats)


def build_or_resume(cfg: RunConfig, run_dir: Path, state: str, device: torch.device,
                    prepared: PreparedData, log: Callable[[str], None], accel: cuda.Accel
                    ) -> Built:
    """The run's parts, continued from its checkpoint when one is usable (else built afresh,
    saying why). The loaded checkpoint is dropped once restored."""
    torch.manual_seed(cfg.seed)
    data = DeviceData(prepared, device, cfg.train.val_fraction, accel.channels_last,
                      stats=input_stats(cfg, prepared), train_images=cfg.train.train_images)
    ckpt_path = run_dir / paths.CHECKPOINT
    initial = read_initial_weights(cfg.train)  # init_from, read once (a rebuild reuses it)
    if initial is not None:
        log(f"init_from {initial.path} (sha256 {initial.sha256}, init_adapt {initial.adapt})")
    built = build(cfg, data, device, prepared, ckpt_path, log, initial, accel)
    if state != "resume" or not ckpt_path.exists():
        return built
    digest = cfg.digest()
    try:
        # weights_only: a checkpoint is data, never code (a crafted pickle is refused).
        # Loaded to the CPU: random-generator states must stay CPU byte tensors, and
        # load_state_dict copies weights and optimiser state onto the model's device.
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("config_digest") != digest:
            raise ValueError(f"it was not written by this run (config {digest})")
        built.trainer.restore(ckpt)
    except Exception as e:  # noqa: BLE001 - unusable checkpoint: start over, say so
        log(f"checkpoint {ckpt_path} cannot be used ({one_line(e)[:300]}); starting from "
            "scratch")
        return build(cfg, data, device, prepared, ckpt_path, log, initial, accel)
    log(f"resumed from {ckpt_path} after epoch {built.trainer.state.global_epoch}")
    return built


@dataclass
class Measured:
    """What a finished run reports: metrics.json's record and layers.csv's rows."""

    metrics: dict[str, Any]
    layers: list[dict[str, Any]]


def measure(cfg: RunConfig, built: Built, loop: LoopState, prepared: PreparedData,
            device: torch.device, wall0: float, run_dir: Path) -> Measured:
    """Extract and fold the trained network, check its budget, evaluate it on the test and
    validation splits and count its parameters and MACs. The evaluation is fp32 (no TF32,
    contiguous memory format), as `load_run` gives the saved network back."""
    model, method, data, trainer = built.model, built.method, built.data, built.trainer
    torch.manual_seed(epoch_seed(cfg.seed, 1_000_000))
    model.eval()
    extra = method.extract(model)
    # A method's own figure of merit when it has one (e.g. supermask's mean over sampled masks);
    # the extracted network's accuracy is always kept beside it as test_top1_extracted.
    headline = extra.pop("test_top1", None)
    planned_epochs = sum(phase.epochs for phase in trainer.phases)
    fold(model)
    model.to(memory_format=torch.contiguous_format)
    layers = layer_densities(model)
    n_prunable = num_prunable(model)
    kept = sum(int(r["nonzero"]) for r in layers if r["prunable"])
    if method.is_budgeted():
        k = budget_count(n_prunable, cfg.sparsity)
        if kept != k:
            raise AssertionError(f"method {cfg.method} kept {kept} prunable weights, budget is {k}")
    batch = cfg.train.eval_batch_size
    test = evaluate(model, data.eval_batches("test", batch, channels_last=False), False)
    val = (trainer.evaluate_split("val", EXTRACTED_EPOCH, final=True) if data.size("val")
           else {"top1": float("nan")})
    macs = layer_macs(model, prepared.image_shape, device)
    dense_macs = sum(macs.values())
    eff_macs = sum(macs[r["layer"]] * float(r["density"]) for r in layers)
    total_params, nonzero_params = count_params(model)
    for r in layers:
        r["macs_dense"] = macs[r["layer"]]
    collapsed = [r["layer"] for r in layers if r["prunable"] and r["nonzero"] == 0]
    metrics: dict[str, Any] = {
        **_flatten({k: v for k, v in cfg.to_dict().items()
                    if k not in ("train", "method_options")}),
        **{f"train_{k}": v for k, v in cfg.train.__dict__.items()},
        **{f"hp_{k}": v for k, v in method.hp.to_dict().items()},
        "sparsity_target": cfg.sparsity,
        "budgeted": method.is_budgeted(),
        "paper": method.paper,
        "frozen_weights": method.frozen_weights,
        # where the data came from (None for a dataset prepared before provenance was recorded)
        **{k: prepared.manifest.get(k) for k in PROVENANCE_KEYS},
        **start_record(built.initial, model),
        "test_top1": test["top1"] if headline is None else headline,
        "test_top1_extracted": test["top1"],
        "test_top5": test["top5"] if data.num_classes > 10 else None,
        "test_loss": test["loss"],
        "val_top1": val["top1"],
        **best_epoch_test(loop.history),
        "selection": cfg.train.selection,
        "epoch_selected": (loop.best_epoch if cfg.train.selection == "val" and loop.best_epoch > 0
                           else loop.global_epoch),
        "epochs_run": loop.global_epoch,
        "epochs_planned": planned_epochs,
        "stopped_early": loop.global_epoch < planned_epochs,
        "best_epoch": loop.best_epoch if loop.best_epoch > 0 else None,
        "num_prunable": n_prunable,
        "kept_prunable": kept,
        "density_achieved": kept / n_prunable,
        "sparsity_achieved": 1 - kept / n_prunable,
        "params_total": total_params,
        "params_nonzero": nonzero_params,
        "macs_dense": dense_macs,
        "macs_effective": eff_macs,
        "layers_collapsed": ";".join(collapsed),
        "num_layers_collapsed": len(collapsed),
        "train_seconds": loop.train_seconds,
        "wall_seconds": time.perf_counter() - wall0,
        **{f"method_{k}": v for k, v in extra.items()},
        **trainer.accel.record(),
        **environment(device),
        "config_digest": cfg.digest(),
        "run_dir": str(run_dir),
    }
    return Measured(metrics, layers)


def write(run_dir: Path, cfg: RunConfig, built: Built, measured: Measured,
          prepared: PreparedData) -> None:
    """The network, history and layers, then metrics.json last (its presence means finished:
    a finished run always has its network); the checkpoint goes after."""
    measured.metrics.update(save_network(  # their sha256
        run_dir, built.model, cfg.arch, built.data.num_classes, prepared.image_shape,
        *input_stats(cfg, prepared)))
    write_csv(run_dir / paths.HISTORY, built.trainer.state.history)
    write_csv(run_dir / paths.LAYERS, measured.layers)
    write_json(run_dir / paths.METRICS, measured.metrics)
    (run_dir / paths.CHECKPOINT).unlink(missing_ok=True)
