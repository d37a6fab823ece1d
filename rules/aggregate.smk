rule aggregate_runs:
    """Every run folder under results/runs -> one tidy row per run + mean/std/n per setting."""
    input:
        run_markers(),
    output:
        summary="results/summary.csv",
        by_setting="results/summary_by_setting.csv",
    log:
        "results/logs/aggregate_runs.log",
    conda:
        "../environment.yml"
    resources:
        mem_mb=4000,
        runtime=30,
    localrule: True
    shell:
        "python -m prunebench aggregate --runs results/runs --out results > {log} 2>&1"
