# Cohort: gather the shard tables, run the statistics, draw the figures, write the report.
# One job each; they read shard tables and cohort tables, never per-participant files
# (except the few overlays of the QC montage).


rule cohort_participants:
    """Gather the shard tables into the analysis table and the exclusions."""
    input:
        sheet=config["participants"],
        # Config phenotypes, or nothing when it is null or absent (no phenotype table).
        phenotypes=phenotypes_table,
        # The last stage's tables carry every earlier exclusion forward.
        measure=expand(results("shards/{shard}/measure.tsv"), shard=all_shards()),
        metrics=expand(results("shards/{shard}/metrics.tsv"), shard=all_shards()),
        qc=expand(results("shards/{shard}/qc.tsv"), shard=all_shards()),
    output:
        participants=results("cohort/participants.tsv"),
        profiles=results("cohort/csa_profiles.tsv"),
        exclusions=results("cohort/exclusions.tsv"),
        outliers=results("cohort/outliers.tsv"),
    log:
        "logs/cohort/participants.log",
    benchmark:
        "benchmarks/cohort/participants.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        # Measured (bench/cohort.py, 100,000 participants in 4,000 shards): peak 2.8 GB,
        # 17 s; memory grows with the cohort (the metrics tables are held as text).
        mem_mb=4500,
        runtime=30,
    params:
        # A function: the folder of the shard tables above, however many there are.
        shards_dir=lambda wildcards: results("shards"),
        shard_size=config["shards"]["size"],
        # Only the stats keys the gather reads: an analysis option reruns the statistics,
        # not the gather.
        stats=gather_stats_json(),
        phenotypes=lambda wildcards, input: phenotypes_argument(input),
    # The command finds the shard tables from the sheet and shard size (thousands of
    # paths would not fit a command line).
    shell:
        "myoflow gather --sheet {input.sheet:q} --shard-size {params.shard_size}"
        " --shards-dir {params.shards_dir:q} {params.phenotypes}"
        " --stats {params.stats:q} --participants-out {output.participants:q}"
        " --profiles-out {output.profiles:q}"
        " --exclusions-out {output.exclusions:q} --outliers-out {output.outliers:q}"
        " > {log:q} 2>&1"


rule cohort_manual_agreement:
    """Score the workflow's masks against the manual label maps of annotated participants."""
    input:
        masks=manual_masks(),
        # Every shard's segmentation table: new masks (a new model) rescore.
        segment=expand(results("shards/{shard}/segment.tsv"), shard=all_shards()),
    output:
        **MANUAL_AGREEMENT,
    log:
        "logs/cohort/manual_agreement.log",
    benchmark:
        "benchmarks/cohort/manual_agreement.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        # Two label maps in memory at a time; about 0.2 s per annotated participant.
        mem_mb=2000,
        runtime=30,
    params:
        participants_dir=results("participants"),
    shell:
        "myoflow manual-agreement --masks {input.masks:q} --participants-dir {params.participants_dir:q}"
        " --dice-out {output.dice:q} --volumes-out {output.volumes:q}"
        " --status-out {output.status:q} > {log:q} 2>&1"


rule cohort_statistics:
    """Run the configured cohort statistics, one TSV table each."""
    input:
        participants=results("cohort/participants.tsv"),
        profiles=results("cohort/csa_profiles.tsv"),
        exclusions=results("cohort/exclusions.tsv"),
        manual=list(manual_annotations().values()),
        # A synthetic cohort's planted values, shown beside the results (none: real data).
        manifest=synthetic_manifest(),
    output:
        report(
            directory(results("cohort/tables")),
            patterns=["{name}.tsv"],
            caption="../workflow/report/tables.rst",
            category="Tables",
            labels={"table": "{name}"},
        ),
    log:
        "logs/cohort/statistics.log",
    benchmark:
        "benchmarks/cohort/statistics.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        # Measured at 100,000 participants: peak 2.0 GB, 17 s.
        mem_mb=3000,
        runtime=30,
    params:
        stats=stats_json(),
        manual=manual_arguments(),
        phenotypes=no_phenotypes_flag(),
        manifest=lambda wildcards, input: (
            f"--manifest {shlex.quote(str(input.manifest))}" if input.manifest else ""
        ),
    shell:
        "myoflow analyse --participants {input.participants:q}"
        " --profiles {input.profiles:q} --exclusions {input.exclusions:q}"
        " --stats {params.stats:q} {params.manual} {params.phenotypes} {params.manifest}"
        " --out {output:q} > {log:q} 2>&1"


rule cohort_figures:
    """Draw the cohort figures (PNG and PDF) from the statistics tables."""
    input:
        tables=results("cohort/tables"),
        participants=results("cohort/participants.tsv"),
    output:
        report(
            directory(results("cohort/figures")),
            patterns=["{name}.png"],
            caption="../workflow/report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        "logs/cohort/figures.log",
    benchmark:
        "benchmarks/cohort/figures.tsv"
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        # Measured at 100,000 participants: peak 0.45 GB, 12 s.
        mem_mb=1500,
        runtime=30,
    params:
        participants_dir=results("participants"),
        stats=stats_json(),
    # The QC montage reads the overlays of four participants under results/participants.
    shell:
        "myoflow plot --tables {input.tables:q} --participants {input.participants:q}"
        " --stats {params.stats:q} --participants-dir {params.participants_dir:q}"
        " --out {output:q} > {log:q} 2>&1"


rule cohort_report:
    """Write the cohort report: one self-contained HTML page."""
    input:
        tables=results("cohort/tables"),
        figures=results("cohort/figures"),
        card=model_card(),
    output:
        report(
            results("cohort/report.html"),
            caption="../workflow/report/report.rst",
            category="Report",
        ),
    log:
        "logs/cohort/report.log",
    benchmark:
        "benchmarks/cohort/report.tsv"
    localrule: True
    conda:
        "../envs/myoflow.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        # The whole config: the methods describe the grid, QC and model as run.
        config=json.dumps(config, sort_keys=True, separators=(",", ":")),
        card=lambda wildcards, input: (
            f"--model-card {shlex.quote(str(input.card))}" if input.card else ""
        ),
    shell:
        "myoflow report --tables {input.tables:q} --figures {input.figures:q}"
        " --config {params.config:q} {params.card} --out {output:q} > {log:q} 2>&1"
