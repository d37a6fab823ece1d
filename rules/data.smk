rule prepare_dataset:
    """One checksummed tensor file per dataset (+ manifest), read or downloaded once."""
    input:
        dataset_source,
    output:
        tensors="results/data/{dataset}.pt",
        manifest="results/data/{dataset}.json",
    params:
        root=prepare_root_flag,
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    conda:
        "../environment.yml"
    resources:
        mem_mb=16000,
        runtime=120,
    # Runs where snakemake runs (the login node on a cluster): downloads need the internet,
    # which compute nodes often lack.
    localrule: True
    shell:
        "python -m prunebench prepare --dataset {wildcards.dataset} --data-dir results/data"
        " {params.root} > {log} 2>&1"
