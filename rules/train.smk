# Training workflow: `snakemake train` trains a segmentation model on config training.pairs,
# `snakemake refine` adds a full-resolution second stage trained on the same participants,
# and `snakemake calibrate` sets per-label thresholds (of the refined model when
# training.refine.enabled) on training.calibration_pairs (none is part of `rule all`). The
# logic lives in myoflow.segment.model.training_run, .refine_train and .calibrate; see
# config/config.yaml.

TRAINING = config["training"]
REFINE = TRAINING.get("refine", {})
CALIBRATE_FROM = (
    f"{TRAINING['out']}/refined" if REFINE.get("enabled") else TRAINING["out"]
)


rule train:
    """Train, evaluate on held-out participants and write the model with its card."""
    input:
        pairs=TRAINING["pairs"],
        start=training_start(TRAINING),
    output:
        model=f"{TRAINING['out']}/model.pt",
        card=f"{TRAINING['out']}/model_card.json",
        page=f"{TRAINING['out']}/MODEL_CARD.md",
        split=f"{TRAINING['out']}/split.json",
    log:
        "logs/training/train.log",
    benchmark:
        "benchmarks/training/train.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: TRAINING["threads"]
    resources:
        # Resources, not params: where and how long it runs do not change the model,
        # so neither reruns a finished training.
        device=str(TRAINING["device"]),
        max_minutes=training_budget(TRAINING),
        # Samples of 48 participants at hips_coarse take ~0.3 GB; the network at width
        # 0.5 and batch 3 a few GB more.
        mem_mb=16000,
        # Minutes: the budget (none: three days) plus an hour for samples and evaluation.
        runtime=int(TRAINING.get("max_minutes") or 72 * 60) + 60,
        # One GPU when training on CUDA (the SLURM profile turns it into --gpus).
        gpu=1 if str(TRAINING["device"]).startswith("cuda") else 0,
    # Only what changes the model; paths, threads, device and the budget stay out.
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
        labels=" ".join(TRAINING["labels"]),
        width=TRAINING["width"],
        crop=TRAINING["crop"],
        epochs=TRAINING["epochs"],
        copies=TRAINING["copies"],
        batch_size=TRAINING["batch_size"],
        learning_rate=TRAINING["learning_rate"],
        split=training_split(TRAINING),
        seed=TRAINING["seed"],
        intensity=intensity_flag(TRAINING),
        start=(
            f" --init-from {shlex.quote(TRAINING['init_from'])}"
            if TRAINING.get("init_from")
            else ""
        ),
    shell:
        "myoflow train --pairs {input.pairs:q} --out {params.out_dir:q}"
        " --labels {params.labels} --width {params.width} --crop {params.crop}"
        " --epochs {params.epochs} --copies {params.copies}"
        " --batch-size {params.batch_size} --lr {params.learning_rate}"
        " {params.split} --seed {params.seed} --threads {threads}"
        "{params.intensity}{params.start}"
        " --device {resources.device} --max-minutes {resources.max_minutes}"
        " > {log:q} 2>&1"


rule refine:
    """A full-resolution refiner for the trained model, on its training participants,
    evaluated on its held-out ones."""
    input:
        pairs=TRAINING["pairs"],
        model=f"{TRAINING['out']}/model.pt",
        card=f"{TRAINING['out']}/model_card.json",
        split=f"{TRAINING['out']}/split.json",
    output:
        model=f"{TRAINING['out']}/refined/model.pt",
        card=f"{TRAINING['out']}/refined/model_card.json",
    log:
        "logs/training/refine.log",
    benchmark:
        "benchmarks/training/refine.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: TRAINING["threads"]
    resources:
        # Resources, not params: where and how long it runs do not change the model,
        # so neither reruns a finished training.
        device=str(TRAINING["device"]),
        max_minutes=training_budget(TRAINING),
        # Fine crops of ~30 full-size participants in float16: ~3.5 GB.
        mem_mb=12000,
        runtime=int(TRAINING.get("max_minutes") or 24 * 60) + 60,
        gpu=1 if str(TRAINING["device"]).startswith("cuda") else 0,
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
        steps=REFINE.get("steps", 1500),
        batch_size=REFINE.get("batch_size", 4),
        patch=" ".join(str(n) for n in REFINE.get("patch", [64, 64, 64])),
        learning_rate=REFINE.get("learning_rate", 1e-3),
        features=REFINE.get("features", 12),
        dilations=" ".join(str(n) for n in REFINE.get("dilations", [1, 2, 4, 1])),
        shifts=" ".join(
            ["--coarse-shifts-mm"] * bool(REFINE.get("coarse_shifts_mm"))
            + [str(v) for shift in REFINE.get("coarse_shifts_mm", []) for v in shift]
        ),
        seed=TRAINING["seed"],
        intensity=intensity_flag(TRAINING),
    shell:
        "myoflow refine --model {params.model_dir:q} --pairs {input.pairs:q}"
        " --train-split {input.split:q} --held-out-pairs {input.pairs:q} --split {input.split:q}"
        " --out {params.out_dir:q} --steps {params.steps}"
        " --batch-size {params.batch_size} --patch {params.patch}"
        " --learning-rate {params.learning_rate} --features {params.features}"
        " --dilations {params.dilations} {params.shifts} --seed {params.seed}"
        "{params.intensity} --threads {threads}"
        " --device {resources.device} --max-minutes {resources.max_minutes}"
        " > {log:q} 2>&1"


rule calibrate:
    """Per-label thresholds of the trained model on annotated participants that are
    neither its training nor its held-out ones; the held-out evaluation is redone."""
    input:
        pairs=calibration_pairs,
        held_out_pairs=TRAINING["pairs"],
        model=f"{CALIBRATE_FROM}/model.pt",
        card=f"{CALIBRATE_FROM}/model_card.json",
        split=f"{TRAINING['out']}/split.json",
    output:
        model=f"{TRAINING['out']}/calibrated/model.pt",
        card=f"{TRAINING['out']}/calibrated/model_card.json",
        table=f"{TRAINING['out']}/calibrated/calibration.tsv",
    log:
        "logs/training/calibrate.log",
    benchmark:
        "benchmarks/training/calibrate.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: TRAINING["threads"]
    resources:
        # Resources, not params: where and how long it runs do not change the model,
        # so neither reruns a finished training.
        device=str(TRAINING["device"]),
        # Candidate voxels of ~30 full-size participants: ~20 MB each.
        mem_mb=8000,
        runtime=120,
        gpu=1 if str(TRAINING["device"]).startswith("cuda") else 0,
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.model),
        model_dir=lambda wildcards, input: os.path.dirname(input.model),
    shell:
        "myoflow calibrate --model {params.model_dir:q} --pairs {input.pairs:q}"
        " --held-out-pairs {input.held_out_pairs:q} --split {input.split:q}"
        " --out {params.out_dir:q} --threads {threads}"
        " --device {resources.device}"
        " > {log:q} 2>&1"
