# prunebench: pruning methods x archs x datasets x budgets x seeds -> tidy CSVs, figures, report.
#   snakemake                                   quick default benchmark (config/config.yaml)
#   snakemake --configfile config/paper.yaml    the papers' grid
#   snakemake --workflow-profile profiles/slurm ...   the same on a SLURM cluster (docs/cluster.md)
#   snakemake --report report.html              the figures and tables as a browsable HTML file
# Every file of the workflow is found beside this Snakefile, so it also runs from elsewhere:
#   snakemake -s /path/to/prunebench/Snakefile -d my-results   (docs/cluster.md)
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

# Each config file is read first by the suite's own YAML loader (prunebench/plan/yamlfile.py):
# a duplicate key (Snakemake's loader keeps the last silently), an alias bomb or bytes that are
# not UTF-8 stop here in one line naming the file and line, before the schema walks the config.
# (A file given with --configfile is parsed by Snakemake before this line: a bomb of nested
# mappings or non-UTF-8 bytes there fail inside Snakemake; `python -m prunebench coverage
# --configfile FILE` checks a file with the suite's loader first.)
sys.path.insert(0, workflow.basedir)
from prunebench.errors import PrunebenchError
from prunebench.plan.yamlfile import load_yaml

for _path in workflow.overwrite_configfiles or ["config/config.yaml"]:
    try:
        load_yaml(_path)
    except PrunebenchError as e:
        raise WorkflowError(str(e)) from None


# A file given with --configfile replaces this default instead of being merged into it: each
# file in config/ describes a whole benchmark, so nothing of the quick one leaks into another.
# --config key=value still overrides single keys of whichever file is used.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(config, "config/schema.yaml")


report: "report/captions/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"


# The report: every run of the grid, aggregated, plotted and set beside the papers. (A comment,
# not a docstring: snakefmt 2.1 moves default_target above a docstring and then cannot parse it.)
rule all:
    default_target: True
    input:
        rules.build_report.output.pdf,
    localrule: True
