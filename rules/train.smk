rule check_options:
    """One method (or variant) of the grid built with its options, in the rules' environment,
    before any of its runs: a value only the method can refuse stops them here. Rerun when the
    options change (params), and then so are its runs, whose options changed too."""
    output:
        touch(OPTIONS_CHECKED),
    params:
        option_sets=option_set_arg,
    log:
        "results/logs/check_options/{method_folder}.log",
    conda:
        "../environment.yml"
    resources:
        mem_mb=2000,
        runtime=10,
    localrule: True
    shell:
        "python -m prunebench check-options {params.option_sets} > {log} 2>&1"


rule train_run:
    """One run of one method: train, prune, evaluate into its run folder.

    Exit 3 (training diverged, failed.json written) is a result, not a workflow failure: the
    marker is touched and aggregation reports the run as failed. Exit 75 (preempted, checkpoint
    saved) and errors fail the job; the profiles' `retries` rerun it and the run resumes.
    `trap '' TERM`: on SIGTERM (SLURM signals every process of the job step at a time limit or
    on preemption) the shell waits for the run to save its checkpoint and exit 75, instead of
    dying first and letting the step be torn down while the checkpoint is being written.
    """
    input:
        data=run_dataset,
        options_checked=run_options_checked,
        after=run_after,
    output:
        marker=touch(RUN_DONE),
    params:
        args=run_args,
        # A job that requests a GPU runs on one: `auto` (the default) becomes `cuda`, which
        # claims a free device slot and fails, saying why, when CUDA is unusable (an explicit
        # device in the config is kept).
        device=lambda wildcards, resources: (
            "device=cuda" if (resources.gpu > 0 or "gpu" in getattr(resources, "gres", ""))
            and dict(JOBS[wildcards.run].overrides).get("device", "auto") == "auto" else ""),
    log:
        "results/logs/train_run/{run}.log",
    conda:
        "../environment.yml"
    threads: lambda wildcards: train_resources(wildcards)["cpus_per_task"]
    resources:
        gpu=lambda wildcards: train_resources(wildcards)["gpu"],
        cpus_per_task=lambda wildcards: train_resources(wildcards)["cpus_per_task"],
        mem_mb=lambda wildcards: train_resources(wildcards)["mem_mb"],
        runtime=lambda wildcards: train_resources(wildcards)["runtime"],
        # SLURM only (the executor plugin's names); None = not requested.
        gpu_model=lambda wildcards: train_resources(wildcards).get("gpu_model"),
        constraint=lambda wildcards: train_resources(wildcards).get("constraint"),
        gres=lambda wildcards: train_resources(wildcards).get("gres"),
    shell:
        "trap '' TERM; python -m prunebench run {params.args} {params.device} > {log} 2>&1"
        " || [ $? -eq 3 ]"
