# Stage 2: stitched, de-identified Dixon NIfTI per participant. One job per shard.


rule convert_shard:
    """Stitch the Dixon DICOM of every participant of one shard into one NIfTI per channel."""
    input:
        # As for the inventory: ancient() so a new release does not rerun old shards.
        sheet=ancient(config["participants"]),
        dicom=shard_dicom_inputs,
        # Says who passed the inventory; those excluded there are not converted.
        inventory="results/shards/{shard}/inventory.tsv",
    # Declared: the shard table, written last and atomically. Per participant the job
    # writes results/participants/{participant}/dixon/{water,fat,in,opp}.nii.gz and
    # dixon/acquisition.json, or exclusion.json (see docs/sharding.md).
    output:
        table="results/shards/{shard}/convert.tsv",
    log:
        "logs/shards/{shard}/convert.log",
    benchmark:
        "benchmarks/shards/{shard}/convert.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        # Measured peak per full-size participant (bench/convert.py): UK Biobank 0.65 GB,
        # NAKO 0.9 GB; participants are converted one after another.
        mem_mb=2000,
        # Minutes: 5-10 s per full-size participant, so ~4 minutes for 25.
        runtime=30,
    params:
        shard_size=config["shards"]["size"],
        ingest=ingest_json(),
    shell:
        "myoflow convert --sheet {input.sheet} --shard {wildcards.shard}"
        " --shard-size {params.shard_size} --inventory {input.inventory}"
        " --ingest {params.ingest:q} --participants-dir results/participants"
        " --out {output.table} > {log} 2>&1"


rule convert_cohort:
    """Gather the shard conversion tables into one cohort table."""
    input:
        sheet=config["participants"],
        tables=expand("results/shards/{shard}/convert.tsv", shard=all_shards()),
    output:
        "results/cohort/convert.tsv",
    log:
        "logs/cohort/convert.log",
    benchmark:
        "benchmarks/cohort/convert.tsv"
    localrule: True
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow/scripts/gather_tables.py"
