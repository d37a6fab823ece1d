rule plot_figures:
    """Accuracy-vs-sparsity, reproduced-vs-published, training curves, layer densities: each
    figure as PDF (for the report) and PNG (for the HTML report), listed in the manifest."""
    input:
        summary=rules.aggregate_runs.output.summary,
        by_setting=rules.aggregate_runs.output.by_setting,
        published=PUBLISHED,
    output:
        figures=report(
            directory(paths.FIGURES_DIR),
            patterns=["{figure}.png"],
            caption="../report/captions/figure.rst",
            category="Figures",
            labels=figure_labels,
        ),
    log:
        log_file("plot_figures"),
    retries: 0
    localrule: True
    conda:
        "../envs/workflow.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        results=input_folder,
    shell:
        prunebench(
            "figures --results {params.results:q} --published {input.published:q}"
            " --out {output.figures:q} > {log:q} 2>&1"
        )


rule build_report:
    """The LaTeX report beside the published numbers, built to PDF with latexmk."""
    input:
        summary=rules.aggregate_runs.output.summary,
        by_setting=rules.aggregate_runs.output.by_setting,
        figures=rules.plot_figures.output.figures,
        published=PUBLISHED,
        config=WORKFLOW_CONFIG_FILE,
        templates=report_templates(),
    output:
        tex=REPORT_TEX,
        pdf=report(REPORT_PDF, caption="../report/captions/report.rst", category="Report"),
    log:
        log_file("build_report"),
    retries: 0
    localrule: True
    conda:
        "../envs/workflow.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        results=input_folder,
        out=output_folder,
    shell:
        prunebench(
            "report --results {params.results:q} --published {input.published:q}"
            " --configfile {input.config:q} --out {params.out:q} > {log:q} 2>&1"
        )
