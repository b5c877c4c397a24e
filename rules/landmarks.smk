# Stage 3: hip joint centres (femoral head centres) per participant. One job per shard.


rule landmarks_shard:
    """Find the hip joint centres of every converted participant of one shard."""
    input:
        # As for the conversion: ancient() so a new release does not rerun old shards.
        sheet=ancient(config["participants"]),
        # Says who converted; those excluded earlier are passed on, not measured.
        convert=results("shards/{shard}/convert.tsv"),
        # Config landmarks.supplied, or nothing when it is null: editing the table reruns
        # the shards, which redo only the participants whose supplied landmarks changed.
        supplied=supplied_landmarks,
    # Declared: the shard table, written last and atomically. Per participant the job
    # writes results/participants/{participant}/landmarks.json or exclusion.json, and
    # skips participants whose landmarks.json is newer than their water and fat (and,
    # for supplied ones, holds the supplied positions).
    output:
        table=results("shards/{shard}/landmarks.tsv"),
    log:
        "logs/shards/{shard}/landmarks.log",
    benchmark:
        "benchmarks/shards/{shard}/landmarks.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        # Measured on one full-size UK Biobank participant (224 x 174 x 370): peak
        # 0.8 GB, 7-8 s of CPU (detection works on a 4 x 4 x 6 mm copy, then fits spheres;
        # a small one 0.23 GB, 3 s).
        mem_mb=2000,
        # Minutes: ~4 for 25 full-size participants (10 s each, 20 with a swap retry).
        runtime=30,
    params:
        participants_dir=results("participants"),
        shard_size=config["shards"]["size"],
        # A params value: a new threshold reruns the shards, which redo only the
        # participants whose outcome it changes.
        min_confidence=config["landmarks"]["min_confidence"],
        supplied=lambda wildcards, input: supplied_landmarks_argument(input),
        # To make stitched channels removed after an earlier run (config keep.stitched)
        # again from the DICOM, as the conversion made them (rules/common.smk).
        ingest=ingest_json(),
    shell:
        "myoflow landmarks --sheet {input.sheet:q} --shard {wildcards.shard}"
        " --shard-size {params.shard_size} --convert {input.convert:q}"
        " --min-confidence {params.min_confidence} {params.supplied}"
        " --ingest {params.ingest:q}"
        " --participants-dir {params.participants_dir:q} --out {output.table:q} > {log:q} 2>&1"
