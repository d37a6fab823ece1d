rule prepare_dataset:
    """One checksummed tensor file per dataset (+ manifest), read or downloaded once. Retried by
    the profile: a download can fail for a moment."""
    input:
        dataset_source,
    output:
        tensors=DATASET_TENSORS,
        manifest=DATASET_MANIFEST,
    log:
        log_file("prepare_dataset/{dataset}"),
    # Runs where snakemake runs (the login node on a cluster): downloads need the internet,
    # which compute nodes often lack.
    localrule: True
    conda:
        "../envs/workflow.yaml"
    resources:
        mem_mb=16000,
        runtime=120,
    params:
        data_dir=output_folder,
        root=prepare_root_args,
        options=prepare_option_args,
    shell:
        prunebench(
            "prepare --dataset {wildcards.dataset:q} --data-dir {params.data_dir:q}"
            " {params.root:q} {params.options:q} > {log:q} 2>&1"
        )
