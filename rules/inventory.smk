# Stage 1: what DICOM each participant has. One job per shard of participants.


rule inventory_shard:
    """Inventory the DICOM series of every participant of one shard."""
    input:
        # ancient(): appending a release to the sheet must not rerun existing shards;
        # the job reads the sheet only to recompute this shard's (unchanged) membership.
        sheet=ancient(config["participants"]),
        dicom=shard_dicom_inputs,
    # The declared output is the shard table, written last and atomically. The job also
    # writes, per participant, results/participants/{participant}/dicom/inventory.tsv and
    # inventory.json, or results/participants/{participant}/exclusion.json: which of these
    # exists depends on the data, so they cannot be declared; later stages take this
    # shard table as input and read them. Complete participants are skipped on rerun.
    output:
        table="results/shards/{shard}/inventory.tsv",
    log:
        "logs/shards/{shard}/inventory.log",
    benchmark:
        "benchmarks/shards/{shard}/inventory.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        shard_size=config["shards"]["size"],
    shell:
        "myoflow inventory --sheet {input.sheet} --shard {wildcards.shard}"
        " --shard-size {params.shard_size} --participants-dir results/participants"
        " --out {output.table} > {log} 2>&1"


rule inventory_cohort:
    """Gather the shard inventories into one cohort table."""
    input:
        # The sheet is an input so that any change to the cohort (a new release, a
        # removed participant) reruns the gather, even with --rerun-triggers mtime.
        sheet=config["participants"],
        tables=expand("results/shards/{shard}/inventory.tsv", shard=all_shards()),
    output:
        "results/cohort/inventory.tsv",
    log:
        "logs/cohort/inventory.log",
    benchmark:
        "benchmarks/cohort/inventory.tsv"
    localrule: True
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow/scripts/gather_tables.py"
