# Ingestion (myoflow.ingest): what DICOM each participant has (inventory), then its stitched,
# de-identified Dixon NIfTI (conversion). One job per shard of participants for each.


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
        table=results("shards/{shard}/inventory.tsv"),
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
        participants_dir=results("participants"),
        shard_size=config["shards"]["size"],
        # A param: changing a limit reruns the shards (participants refused before are
        # inventoried again; those inventoried stay current).
        limits=json.dumps(config["ingest"].get("limits", {}), sort_keys=True),
    shell:
        "myoflow inventory --sheet {input.sheet:q} --shard {wildcards.shard}"
        " --shard-size {params.shard_size} --participants-dir {params.participants_dir:q}"
        " --limits {params.limits:q} --out {output.table:q} > {log:q} 2>&1"


rule inventory_cohort:
    """Gather the shard inventories into one cohort table."""
    input:
        # The sheet is an input so that any change to the cohort (a new release, a
        # removed participant) reruns the gather, even with --rerun-triggers mtime.
        sheet=config["participants"],
        tables=expand(results("shards/{shard}/inventory.tsv"), shard=all_shards()),
    output:
        results("cohort/inventory.tsv"),
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


rule convert_shard:
    """Stitch the Dixon DICOM of every participant of one shard into one NIfTI per channel."""
    input:
        # As for the inventory: ancient() so a new release does not rerun old shards.
        sheet=ancient(config["participants"]),
        dicom=shard_dicom_inputs,
        # Says who passed the inventory; those excluded there are not converted.
        inventory=results("shards/{shard}/inventory.tsv"),
    # Declared: the shard table, written last and atomically. Per participant the job
    # writes results/participants/{participant}/dixon/{water,fat,in,opp}.nii.gz and
    # dixon/acquisition.json, or exclusion.json (see docs/sharding.md).
    output:
        table=results("shards/{shard}/convert.tsv"),
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
        participants_dir=results("participants"),
        shard_size=config["shards"]["size"],
        ingest=ingest_json(),
    shell:
        "myoflow convert --sheet {input.sheet:q} --shard {wildcards.shard}"
        " --shard-size {params.shard_size} --inventory {input.inventory:q}"
        " --ingest {params.ingest:q} --participants-dir {params.participants_dir:q}"
        " --out {output.table:q} > {log:q} 2>&1"


rule convert_cohort:
    """Gather the shard conversion tables into one cohort table."""
    input:
        sheet=config["participants"],
        tables=expand(results("shards/{shard}/convert.tsv"), shard=all_shards()),
    output:
        results("cohort/convert.tsv"),
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
