rule check_options:
    """One method (or variant) of the grid built with its options, in the rules' environment,
    before any of its runs: a value only the method can refuse stops them here. Rerun when the
    options change (params), and then so are its runs, whose options changed too. Not retried:
    its failure is deterministic."""
    output:
        checked=touch(OPTIONS_CHECKED),
    log:
        log_file("check_options/{method_folder}"),
    retries: 0
    localrule: True
    conda:
        "../envs/workflow.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        option_sets=option_set_arg,
    shell:
        prunebench("check-options {params.option_sets:q} > {log:q} 2>&1")


rule train_run:
    """One run of one method: train, prune, evaluate into its run folder.

    Exit paths.EXIT_DIVERGED (training diverged, failed.json written) is a result, not a
    workflow failure: the marker is touched and aggregation reports the run as failed. Exit
    paths.EXIT_PREEMPTED (checkpoint saved) and errors fail the job; the profiles' `retries`
    rerun it and the run resumes. `trap '' TERM`: on SIGTERM (SLURM signals every process of the
    job step at a time limit or on preemption) the shell waits for the run to save its
    checkpoint and exit, instead of dying first and letting the step be torn down while the
    checkpoint is being written. The job's time and memory (`benchmark`) go into the run folder
    and from there into the summary. A job that holds a GPU runs `prunebench doctor` first (into
    its log): a node whose GPU, driver or torch build cannot run it fails in seconds, saying why.
    """
    input:
        data=run_dataset,
        options_checked=run_options_checked,
        after=run_after,
        init_from=run_init_from,
    output:
        marker=touch(RUN_DONE),
    log:
        log_file("train_run/{run}"),
    benchmark:
        RUN_BENCHMARK
    conda:
        "../envs/workflow.yaml"
    threads: run_threads
    resources:
        gpu=run_resource("gpu"),
        cpus_per_task=run_resource("cpus_per_task"),
        mem_mb=run_resource("mem_mb"),
        runtime=run_resource("runtime"),
        gpu_model=run_resource("gpu_model"),
        constraint=run_resource("constraint"),
        gres=run_resource("gres"),
        slurm_partition=run_resource("slurm_partition"),
        slurm_account=run_resource("slurm_account"),
        qos=run_resource("qos"),
    params:
        args=run_args,
        device=run_device_arg,
        diverged=DIVERGED,
        doctor=run_doctor,
    shell:
        prunebench(
            "run {params.args:q} {params.device:q} >> {log:q} 2>&1"
            " || [ $? -eq {params.diverged:q} ]",
            before="trap '' TERM; : > {log:q}; [ -z {params.doctor:q} ] || "
            + prunebench("doctor --device {params.doctor:q} --no-compile >> {log:q} 2>&1 && "),
        )
