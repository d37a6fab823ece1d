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
        "results/data/{dataset}.pt",
    output:
        marker=touch(RUN_DONE),
    params:
        run_dir=lambda wildcards, output: os.path.dirname(output.marker),
        sparsity=sparsity_flag,
        overrides=run_overrides,
    log:
        "results/logs/train_run/{dataset}/{arch}/{method}/s{sparsity}/seed{seed}.log",
    conda:
        "../environment.yml"
    threads: lambda wildcards: train_resources(wildcards)["cpus_per_task"]
    resources:
        gpu=lambda wildcards: train_resources(wildcards)["gpu"],
        cpus_per_task=lambda wildcards: train_resources(wildcards)["cpus_per_task"],
        mem_mb=lambda wildcards: train_resources(wildcards)["mem_mb"],
        runtime=lambda wildcards: train_resources(wildcards)["runtime"],
    shell:
        "trap '' TERM; python -m prunebench run --dataset {wildcards.dataset}"
        " --arch {wildcards.arch} --method {wildcards.method}{params.sparsity}"
        " --seed {wildcards.seed} --run-dir {params.run_dir} {params.overrides}"
        " > {log} 2>&1 || [ $? -eq 3 ]"
