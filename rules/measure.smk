# Stage 5: metrics, QC flags and an overlay per segmented participant. One job per shard.


rule measure_shard:
    """Measure metrics, QC flags and an overlay for every segmented participant of one shard."""
    input:
        sheet=ancient(config["participants"]),
        # Who passed the landmarks and the segmentation; the rest are passed on.
        landmarks=results("shards/{shard}/landmarks.tsv"),
        segment=results("shards/{shard}/segment.tsv"),
    # Declared: three shard tables, the status table written last. Per participant the
    # job writes results/participants/{participant}/metrics.json, qc/overlay.png,
    # qc/preview.nii.gz and qc/flags.json (or exclusion.json), and skips participants
    # whose flags.json is newer than its inputs (redoing only the flags when the qc
    # settings changed). Last reader of dixon/{water,fat,in,opp}.nii.gz, it then removes
    # those config keep.stitched does not keep (docs/storage.md).
    output:
        table=results("shards/{shard}/measure.tsv"),
        metrics=results("shards/{shard}/metrics.tsv"),
        qc=results("shards/{shard}/qc.tsv"),
    log:
        "logs/shards/{shard}/measure.log",
    benchmark:
        "benchmarks/shards/{shard}/measure.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        # Measured on one full-size UK Biobank participant: peak 0.44 GB. CPU: ~2 s per
        # participant in a shard (bench/throughput.py --size full; reading four channels
        # and the labels ~0.6 s of it), and ~2.5 s per job to start Python and import.
        mem_mb=2000,
        # Minutes: ~3 for 25 full-size participants.
        runtime=20,
    params:
        participants_dir=results("participants"),
        shard_size=config["shards"]["size"],
        # The qc section as JSON: changing a threshold reruns the shards (params trigger),
        # which redo only the flags.
        qc=json.dumps(config.get("qc", {}), sort_keys=True, separators=(",", ":")),
        # The stitched channels each participant keeps once measured (config
        # keep.stitched): a change reruns the shards, which remove what is no longer kept.
        keep_stitched=keep_stitched(),
        # To make removed channels again from the DICOM when a participant is measured
        # again (rules/common.smk).
        ingest=ingest_json(),
    shell:
        "myoflow measure --sheet {input.sheet:q} --shard {wildcards.shard}"
        " --shard-size {params.shard_size} --landmarks {input.landmarks:q}"
        " --segment {input.segment:q} --qc {params.qc:q}"
        " --participants-dir {params.participants_dir:q} --metrics-table {output.metrics:q}"
        " --qc-table {output.qc:q} --keep-stitched {params.keep_stitched}"
        " --ingest {params.ingest:q} --out {output.table:q} > {log:q} 2>&1"
