"""The SLURM profile. The documented cluster command (docs/cluster.md), parsed as Snakemake
parses it, applies the cluster settings alone (no machine-wide GPU cap of the local profile). On
a one-node SLURM started by the test (slurm-wlm + munge, which `make test` installs with apt-get
where it can; skipped with the reason otherwise): train_run jobs go through sbatch with their GPU
request, and a SIGTERM-ed job is resubmitted and resumes.

The cluster is private to the test: its own munged socket and key, slurm.conf, state folders and
ports in a temporary folder. Clients find slurm.conf through SLURM_CONF, except the `srun` the
executor plugin runs inside each job, which drops every SLURM_* variable: it finds the config the
way clients on a configless compute node do, at /run/slurm/conf, which the test links to its
folder (on a machine with no SLURM configuration of its own) and removes afterwards. Every daemon
is stopped by the pid the test started."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_workflow import REPO, SNAKEMAKE, _copy_workflow, _env, _tiny_config, _write_config

from prunebench import paths
from prunebench.plan import grid

DAEMONS = ("munged", "slurmctld", "slurmd")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
NODE_CONF = Path("/run/slurm/conf")  # slurmd's config cache on a configless node
# Test-only executor settings (docs/development.md, the SLURM test): without accounting `sacct`
# fails, so poll with squeue; no account to guess; short waits before and between status checks.
TEST_PROFILE = {
    "slurm-status-command": "squeue",
    "slurm-no-account": True,
    "slurm-init-seconds-before-status-checks": 1,
    "seconds-between-status-checks": 2,
    "slurm-keep-successful-logs": True,
    "latency-wait": 5,
    "jobs": 4,
    "retries": 1,
}


def _documented_cluster_command() -> list[str]:
    """The command of docs/cluster.md's "The command" section, as argv after `snakemake`."""
    page = (REPO / "docs" / "cluster.md").read_text()
    section = page.split("## The command", 1)[1].split("\n## ", 1)[0]
    commands = [ln.strip() for ln in section.splitlines() if ln.startswith("snakemake ")]
    assert len(commands) == 1, commands
    return shlex.split(commands[0])[1:]


def test_documented_cluster_command_applies_the_slurm_profile_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No global GPU cap (each job asks SLURM for its own GPUs), the cluster's retries and
    latency-wait: what Snakemake's own argument parser makes of the documented command."""
    from snakemake.cli import parse_args

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a login node with a GPU changes nothing
    _, args = parse_args(_documented_cluster_command())
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert args.executor == "slurm"
    assert "gpu" not in (args.resources or {}), args.resources
    assert (args.retries, args.latency_wait) == (3, 120) == (profile["retries"],
                                                            profile["latency-wait"])
    assert (args.jobs, args.local_cores) == (profile["jobs"], profile["local-cores"])
    assert "train_run" in args.set_resources and "slurm_extra" in args.set_resources["train_run"]


def _require_slurm() -> None:
    """The daemons and clients, installed beforehand by `make test` (Makefile target slurm)."""
    missing = [d for d in (*DAEMONS, "sbatch", "sinfo") if shutil.which(d) is None]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): `make slurm` "
                    "installs slurm-wlm and munge with apt-get as root")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line(host: str) -> str:
    """This machine as `slurmd -C` sees it (CPUs, sockets, cores, memory), with one fake GPU."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    keep = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore",
            "RealMemory")
    spec = " ".join(f"{k}={fields[k]}" for k in keep if k in fields)
    return f"NodeName={host} NodeAddr=127.0.0.1 {spec} Gres=gpu:1 State=UNKNOWN"


def _slurm_conf(root: Path, host: str, munge_socket: Path) -> Path:
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=prunebench-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "GresTypes=gpu",
        "MpiDefault=none",
        "ReturnToService=2",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "SchedulerType=sched/builtin",
        "KillWait=10",
        "MinJobAge=300",
        _node_line(host),
        f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    (root / "gres.conf").write_text("Name=gpu File=/dev/null\n")
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    return conf


def _wait(what: str, check, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running one-node SLURM; yields the environment its clients need (SLURM_CONF)."""
    _require_slurm()
    if SYSTEM_CONF.exists() or NODE_CONF.exists() or NODE_CONF.is_symlink():
        pytest.skip(f"this machine has a SLURM configuration ({SYSTEM_CONF} or {NODE_CONF}); "
                    "the test starts its own cluster only where there is none")
    root = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    key, munge_socket = root / "munge.key", root / "munge.socket"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = _slurm_conf(root, host, munge_socket)
    env = {**_env(), "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []
    made_parent = not NODE_CONF.parent.exists()
    NODE_CONF.parent.mkdir(exist_ok=True)
    NODE_CONF.symlink_to(root, target_is_directory=True)
    try:
        started.append(subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={munge_socket}",
             f"--key-file={key}", f"--pid-file={root}/munged.pid",
             f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait("munged", munge_socket.exists)
        for daemon in ("slurmctld", "slurmd"):
            started.append(subprocess.Popen([daemon, "-D", "-f", str(conf)], env=env,
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))

        def node_idle() -> bool:
            for proc in started:
                assert proc.poll() is None, f"{proc.args[0]} exited: see logs in {root}"
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                 text=True, timeout=30)
            return out.stdout.strip() == "idle"

        _wait("the SLURM node", node_idle, timeout=120)
        yield env
    finally:
        for proc in reversed(started):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        NODE_CONF.unlink()
        if made_parent:
            NODE_CONF.parent.rmdir()


def _test_profile(workdir: Path) -> str:
    """profiles/slurm with the test-only settings, written beside it in the working copy."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    profile.update(TEST_PROFILE)
    profile["default-resources"].update(mem_mb=500, runtime=10)
    folder = workdir / "profiles" / "slurm-test"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return "profiles/slurm-test"


def _gpu_config(methods: list[str], epochs: int) -> dict:
    config = _tiny_config(methods, epochs=epochs)
    config["resources"] = {"train": {"gpu": 1, "cpus_per_task": 1, "mem_mb": 1000,
                                     "runtime": 10}, "train_overrides": []}
    return config


def _run(workdir: Path, env: dict[str, str], config: dict, timeout: int = 600
         ) -> subprocess.Popen:
    """The documented cluster command with the test's profile and config in place of
    profiles/slurm and config/paper.yaml."""
    swap = {"profiles/slurm": _test_profile(workdir),
            "config/paper.yaml": _write_config(workdir, config)}
    argv = [swap.get(arg, arg) for arg in _documented_cluster_command()]
    assert sorted(set(argv) & set(swap.values())) == sorted(swap.values()), argv
    if grid.requests_gpu(config.get("resources", {}).get("train", {})):
        env = {**env, paths.GPU_PATHS_ON_CPU_ENV: "1"}  # the node's GPU is fake: CPU training
    return subprocess.Popen(
        [SNAKEMAKE, "aggregate_runs", *argv, "--verbose"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slurm
@pytest.mark.slow
def test_train_jobs_run_through_sbatch_with_their_gpu(slurm: dict[str, str],
                                                     tmp_path: Path) -> None:
    workdir = _copy_workflow(tmp_path)
    proc = _run(workdir, slurm, _gpu_config(["dense", "random"], epochs=1))
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-6000:]
    jobids = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(jobids) == 2, output[-6000:]  # the two train_run jobs; the others are local
    sbatch = [ln for ln in output.splitlines() if "sbatch call: sbatch " in ln]
    assert sbatch and all("--gpus=1" in ln for ln in sbatch), sbatch
    assert all("--signal=TERM@120" in ln for ln in sbatch), sbatch
    logs = sorted((workdir / ".snakemake/slurm_logs/rule_train_run").rglob("*.log"))
    assert len(logs) == 2, logs
    for run in ("dense/snone", "random/s0.9"):
        assert (workdir / f"results/runs/digits/conv2/{run}/seed0/metrics.json").exists()
    assert (workdir / "results/summary.csv").exists()


def _slurm_jobs(env: dict[str, str]) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], env=env,
                         capture_output=True, text=True, timeout=30)
    return out.stdout.split()


@pytest.mark.slurm
@pytest.mark.slow
def test_terminated_job_is_resubmitted_and_resumes(slurm: dict[str, str],
                                                  tmp_path: Path) -> None:
    """What `--signal=TERM@120` does before a time limit (and preemption does): SIGTERM to the
    job's steps. The run checkpoints and exits 75, the job fails, Snakemake resubmits it
    (retries) and the new job resumes from the checkpoint."""
    workdir = _copy_workflow(tmp_path)
    run_dir = workdir / "results/runs/digits/conv2/dense/snone/seed0"
    proc = _run(workdir, slurm, _gpu_config(["dense"], epochs=40))
    try:
        _wait("the first checkpoint", lambda: proc.poll() is None
              and (run_dir / "checkpoint.pt").exists(), timeout=300)
        jobs = _slurm_jobs(slurm)
        assert len(jobs) == 1, jobs
        subprocess.run(["scancel", "--signal=TERM", jobs[0]], env=slurm, check=True,
                       timeout=30)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-6000:]
    jobids = re.findall(r"submitted with SLURM jobid (\d+)", output)
    assert len(jobids) == 2 and jobids[0] == jobs[0], output[-6000:]
    log = (run_dir / "log.txt").read_text()
    assert "preempted: signal 15 received; checkpoint saved" in log, log
    assert "resumed from" in log, log
    assert (run_dir / "metrics.json").exists()


def test_gpu_model_constraint_and_gres_come_from_the_workflow_config(tmp_path: Path) -> None:
    """resources.train and train_overrides hand the plugin's gpu_model, constraint, gres,
    slurm_partition, slurm_account and qos to train_run, per run (unset ones stay unset: the
    cluster's default partition); a gres GPU request also makes the run use device=cuda."""
    (tmp_path / "config").mkdir()
    config = _tiny_config(["dense", "random", "magnitude"])
    config["train"].pop("device")
    config["resources"]["train"].update(gpu=1, constraint="a100|h100", slurm_account="lab")
    config["resources"]["train_overrides"] = [
        {"methods": ["dense"], "gpu_model": "a100", "slurm_partition": "gpu", "qos": "long"},
        {"methods": ["random"], "gpu": 0, "gres": "gpu:h100:1"},
        {"methods": ["magnitude"], "gpu": 0, "slurm_partition": "cpu"}]
    configfile = str(tmp_path / _write_config(tmp_path, config))
    out = subprocess.run(
        [SNAKEMAKE, "aggregate_runs", "-n", "-p", "--forceall", "--workflow-profile", "none",
         "--cores", "1", "--directory", str(tmp_path), "--configfile", configfile],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    jobs = out.stdout.split("\nrule ")
    dense = next(j for j in jobs if j.startswith("train_run") and "/dense/" in j)
    random = next(j for j in jobs if j.startswith("train_run") and "/random/" in j)
    magnitude = next(j for j in jobs if j.startswith("train_run") and "/magnitude/" in j)
    assert "gpu=1" in dense and "gpu_model=a100" in dense and "constraint=a100|h100" in dense
    assert "slurm_partition=gpu" in dense and "qos=long" in dense and "gres" not in dense
    assert "gres=gpu:h100:1" in random and "gpu=0" in random and "gpu_model" not in random
    assert "slurm_partition" not in random and "qos" not in random
    assert "slurm_partition=cpu" in magnitude and "gpu=0" in magnitude
    assert all("slurm_account=lab" in job for job in (dense, random, magnitude))
    assert "device=cuda" in dense and "device=cuda" in random and "device=cuda" not in magnitude


def test_the_profile_sends_no_run_to_a_partition_of_its_own() -> None:
    """A run's partition comes from the workflow config only: the SLURM profile sets none for
    train_run (it used to send every run, CPU-only ones included, to one partition) and no
    default a job would never see."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert "slurm_partition" not in profile["set-resources"]["train_run"]
    assert "slurm_partition" not in profile.get("default-resources", {})
    for name in ("default", "slurm"):
        assert yaml.safe_load((REPO / f"profiles/{name}/config.yaml").read_text())[
            "show-failed-logs"] is True
