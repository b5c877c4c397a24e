# Stage 4: muscle label maps per participant. One job per shard, one model load per job.


rule segment_shard:
    """Segment the muscles of every participant of one shard with the configured model."""
    input:
        # The model's files (rules/common.smk): model.pt and model_card.json, or an nnU-Net
        # model's plans, dataset.json and checkpoints. New ones rerun every shard (mtime),
        # and inside the job every participant (their segmentation.json names other
        # weights); backend myoflow checks the weights' sha256 against the card.
        unpack(segment_model_inputs),
        # As for the other shard stages: ancient() so a new release does not rerun old shards.
        sheet=ancient(config["participants"]),
        # Says who passed the earlier stages; per participant the job reads landmarks.json
        # and the Dixon channels the model needs (see docs/sharding.md).
        landmarks=results("shards/{shard}/landmarks.tsv"),
    # Declared: the shard table, written last and atomically. Per participant the job
    # writes results/participants/{participant}/seg/labels.nii.gz and seg/segmentation.json,
    # or exclusion.json.
    output:
        table=results("shards/{shard}/segment.tsv"),
    log:
        "logs/shards/{shard}/segment.log",
    benchmark:
        "benchmarks/shards/{shard}/segment.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: config["model"]["threads"]
    resources:
        # Measured (bench/inference.py, full-size UK Biobank, width-0.5 model): peak 1.5 GB
        # for a process that also held the bench's data; participants go one at a time.
        mem_mb=3000,
        # Minutes: 12-15 CPU seconds per full-size participant with the shipped cascade
        # (bench/throughput.py --size full; the network's forward passes 8 of them on one
        # thread, 11-12 on two), so ~6 minutes of CPU for 25, more on shared CPUs; a GPU
        # takes the forward passes (about three quarters) off the CPUs. Backend nnunetv2:
        # from its measured seconds per participant (rules/common.smk).
        runtime=segment_runtime_minutes(),
        # On SLURM the plugin asks for this many GPUs (the profile names the partition).
        gpu=0 if config["model"]["device"] == "cpu" else 1,
    params:
        participants_dir=results("participants"),
        shard_size=config["shards"]["size"],
        device=config["model"]["device"],
        batch_size=config["model"]["batch_size"],
        # --backend and the model's options (rules/common.smk).
        model_args=segment_model_args,
        # Not passed on: new weights rerun every shard even when their files are older
        # than the masks (rules/common.smk).
        model=model_identity(),
        # To make stitched channels removed after an earlier run (config keep.stitched)
        # again from the DICOM, as the conversion made them (rules/common.smk).
        ingest=ingest_json(),
    shell:
        "myoflow segment --sheet {input.sheet:q} --shard {wildcards.shard}"
        " --shard-size {params.shard_size} --landmarks {input.landmarks:q}"
        " {params.model_args} --device {params.device}"
        " --batch-size {params.batch_size} --threads {threads}"
        " --ingest {params.ingest:q}"
        " --participants-dir {params.participants_dir:q} --out {output.table:q} > {log:q} 2>&1"
