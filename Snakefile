# prunebench: pruning methods x archs x datasets x budgets x seeds -> tidy CSVs, figures, report.
#   snakemake                                   quick default benchmark (config/config.yaml)
#   snakemake --configfile config/paper.yaml    the papers' grid
#   snakemake --workflow-profile profiles/slurm ...   the same on a SLURM cluster (README)
from snakemake.utils import min_version, validate

min_version("9.0")


# A file given with --configfile replaces this default instead of being merged into it: each
# file in config/ describes a whole benchmark, so nothing of the quick one leaks into another.
# --config key=value still overrides single keys of whichever file is used.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"


rule all:
    """The report: every run of the grid, aggregated, plotted and set beside the papers."""
    input:
        "results/report/report.pdf",
    default_target: True
    localrule: True
