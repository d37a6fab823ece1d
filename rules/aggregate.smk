rule aggregate_runs:
    """Every run folder under the runs root -> one tidy row per run + mean/std/n per setting.

    `update`: Snakemake keeps the two CSVs while the job runs (prunebench writes each
    atomically) and restores them if it fails, instead of deleting them first; a Snakemake
    killed meanwhile leaves them marked incomplete, so the next run rebuilds them rather than
    finding nothing to do. Not retried: its failure is deterministic."""
    input:
        run_markers(),
    output:
        summary=report(
            update(SUMMARY),
            caption="../report/captions/summary.rst",
            category="Tables",
        ),
        by_setting=report(
            update(SUMMARY_BY_SETTING),
            caption="../report/captions/summary_by_setting.rst",
            category="Tables",
        ),
    log:
        log_file("aggregate_runs"),
    retries: 0
    localrule: True
    conda:
        "../envs/workflow.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        runs=runs_root,
        out=output_folder,
    shell:
        prunebench("aggregate --runs {params.runs:q} --out {params.out:q} > {log:q} 2>&1")
