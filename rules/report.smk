rule plot_figures:
    """Accuracy-vs-sparsity, reproduced-vs-published, training curves, layer densities."""
    input:
        summary="results/summary.csv",
        by_setting="results/summary_by_setting.csv",
        published="config/published_results.csv",
    output:
        manifest="results/figures/manifest.json",
    log:
        "results/logs/plot_figures.log",
    conda:
        "../environment.yml"
    resources:
        mem_mb=4000,
        runtime=30,
    localrule: True
    shell:
        "python -m prunebench figures --results results --published {input.published:q}"
        " --out results/figures > {log:q} 2>&1"


rule build_report:
    """The LaTeX report beside the published numbers, built to PDF with latexmk."""
    input:
        summary="results/summary.csv",
        by_setting="results/summary_by_setting.csv",
        figures="results/figures/manifest.json",
        published="config/published_results.csv",
        config=WORKFLOW_CONFIG_FILE,
        templates=report_templates(),
    output:
        tex="results/report/report.tex",
        pdf="results/report/report.pdf",
    log:
        "results/logs/build_report.log",
    conda:
        "../environment.yml"
    resources:
        mem_mb=4000,
        runtime=30,
    localrule: True
    shell:
        "python -m prunebench report --results results --published {input.published:q}"
        " --config {input.config:q} --out results/report > {log:q} 2>&1"
