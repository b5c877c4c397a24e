# Loads and validates the participant sheet once, at parse time, and holds the input
# functions that the stages use. Parsing must stay cheap (every cluster job parses the
# workflow again): read one TSV, never list DICOM trees.

import json
import math
import os
import shlex

from myoflow.core.sheet import (
    PARTICIPANT_WILDCARD,
    load_sheet,
    resolve_dicom_path,
    validate_sheet,
)
from myoflow.core.shards import SHARD_WILDCARD, assign_shards
from snakemake.exceptions import WorkflowError

RESULTS_DIR = config["results"]
"""Where every output of the run goes (config `results`): participants, shards, cohort."""
SHEET_PATH = config["participants"]
SHEET = load_sheet(SHEET_PATH)
validate_sheet(SHEET, source=SHEET_PATH)
if workflow.is_main_process:  # seconds for 100,000 rows: not again in every job
    validate(SHEET, "../config/schemas/participants.schema.yaml")
SHARDS = assign_shards(SHEET, config["shards"]["size"])
SHARD_DICOM = {
    shard: [str(resolve_dicom_path(SHEET_PATH, value)) for value in members]
    for shard, members in SHARDS.groupby("shard", sort=True)["dicom"]
}


wildcard_constraints:
    shard=SHARD_WILDCARD,
    participant=PARTICIPANT_WILDCARD,


def results(path):
    """`path` under the run's results folder, e.g. results("shards/{shard}/convert.tsv")."""
    return os.path.join(RESULTS_DIR, path)


def all_shards():
    """Names of all shards, sorted (release, then number)."""
    return list(SHARD_DICOM)


def shard_dicom_inputs(wildcards):
    """The DICOM folders and zips of one shard's participants that exist.

    One stat per participant, when the job is planned. Missing ones are left out so that
    the job runs and records them as excluded instead of the workflow stopping; a folder
    that appears later changes the job's input set, which reruns the shard (rerun
    trigger `input`).
    """
    return [path for path in SHARD_DICOM[wildcards.shard] if os.path.exists(path)]


def ingest_json():
    """The ingest settings as one JSON argument of `myoflow convert`.

    A params value, so that changing a channel rule or the grid reruns the shards
    (rerun trigger `params`); participants are then redone because the settings'
    digest in their acquisition.json no longer matches. The stages that read the
    stitched channels (landmarks, segmentation, measure) take it too, to make channels
    removed after an earlier run (config keep.stitched) again as the conversion made
    them; a change reruns their shards, which the conversion's new tables do anyway.
    """
    return json.dumps(config["ingest"], sort_keys=True, separators=(",", ":"))


def keep_stitched():
    """Config keep.stitched: the stitched channels a participant keeps once measured."""
    return config.get("keep", {}).get("stitched", "none")


def final_outputs():
    """Every target of `rule all`."""
    return [
        results("cohort/inventory.tsv"),
        results("cohort/convert.tsv"),
        results("cohort/participants.tsv"),
        results("cohort/exclusions.tsv"),
        results("cohort/report.html"),
    ]


def phenotypes_table(wildcards):
    """The phenotype table (config `phenotypes`) as a list: empty when it is null or absent.

    Without one the cohort rules still run (the phenotype columns are left empty and the
    report lists the analyses that need them). A path that is set must exist: a typo stops
    the run when the workflow is planned, before any job, instead of being taken for "no
    phenotypes".
    """
    path = config.get("phenotypes")
    if not path:
        return []
    if not os.path.exists(path):
        raise WorkflowError(
            f"config phenotypes: {path} does not exist. Give the phenotype table's path, or "
            "set `phenotypes: null` (on the command line: --config phenotypes=) to run "
            "without phenotypes."
        )
    return [path]


def phenotypes_argument(input):
    """`--phenotypes PATH` for `myoflow gather`, or `--no-phenotypes` without a table."""
    if input.phenotypes:
        return f"--phenotypes {shlex.quote(str(input.phenotypes[0]))}"
    return "--no-phenotypes"


def supplied_landmarks(wildcards):
    """The supplied-landmarks table (config `landmarks.supplied`) as a list: empty when null.

    An input of every landmarks shard, so that editing it reruns them (each job redoes
    only the participants whose supplied landmarks changed). A path that is set must
    exist and every row must be valid: a bad row stops the run when it is planned, naming
    the row (myoflow.landmarks.supplied).
    """
    path = config.get("landmarks", {}).get("supplied")
    if not path:
        return []
    if not os.path.exists(path):
        raise WorkflowError(
            f"config landmarks.supplied: {path} does not exist. Give the table's path, or set "
            "`landmarks: {supplied: null}` to detect every participant's landmarks."
        )
    if workflow.is_main_process:
        from myoflow.landmarks.supplied import read_supplied_landmarks

        try:
            read_supplied_landmarks(path, SHEET["participant_id"])
        except Exception as err:
            raise WorkflowError(str(err)) from err
    return [path]


def supplied_landmarks_argument(input):
    """`--supplied PATH` for `myoflow landmarks`, or nothing without a table."""
    if input.supplied:
        return f"--supplied {shlex.quote(str(input.supplied[0]))}"
    return ""


def no_phenotypes_flag():
    """`--no-phenotypes` for `myoflow analyse` when config `phenotypes` is null or absent
    (a params value: setting or unsetting the table reruns the statistics)."""
    return "" if config.get("phenotypes") else "--no-phenotypes"


def stats_json():
    """The stats settings as one JSON argument (a param: a change reruns what uses it)."""
    return json.dumps(config.get("stats", {}), sort_keys=True, separators=(",", ":"))


GATHER_STATS_KEYS = (
    "required_phenotypes",
    "plausible_ranges",
    "bmi_tolerance",
    "required_metrics",
    "outliers",
)
"""The stats keys `myoflow gather` reads (myoflow.cohort.gather.GatherSettings.from_config;
tests/test_releases.py checks that the two agree)."""


def gather_stats_json():
    """The stats settings the gather reads, as one JSON argument of `myoflow gather`.

    Only these, so that changing an analysis option (a regression, the confidence level)
    reruns the statistics but not the gather of every shard table (params trigger).
    """
    stats = config.get("stats", {})
    chosen = {key: stats[key] for key in GATHER_STATS_KEYS if key in stats}
    return json.dumps(chosen, sort_keys=True, separators=(",", ":"))


MANUAL_AGREEMENT = {
    "dice": results("cohort/manual/dice.tsv"),
    "volumes": results("cohort/manual/volumes.tsv"),
    "status": results("cohort/manual/status.tsv"),
}
"""What rule cohort_manual_agreement writes when manual masks are configured."""


def manual_masks():
    """The sheet of manual label maps, as a list: empty when none is configured."""
    given = config.get("stats", {}).get("manual_annotations") or {}
    return [given["masks"]] if given.get("masks") else []


def manual_annotations():
    """The manual annotation tables by kind (volumes, dice) for the statistics: those the
    workflow computes from manual masks, else the configured tables; unset ones left out.
    """
    given = config.get("stats", {}).get("manual_annotations") or {}
    tables = {k: path for k, path in given.items() if k != "masks" and path}
    if manual_masks():
        if tables:
            raise ValueError(
                "config stats.manual_annotations: give `masks` (the workflow scores them) "
                f"or the tables {sorted(tables)}, not both"
            )
        return {k: MANUAL_AGREEMENT[k] for k in ("volumes", "dice")}
    return tables


def manual_arguments():
    """`myoflow analyse` options naming the manual annotation tables."""
    option = {"volumes": "--manual", "dice": "--dice"}
    return " ".join(
        f"{option[k]} {shlex.quote(path)}" for k, path in manual_annotations().items()
    )


def synthetic_manifest():
    """Config synthetic_manifest if it is set and exists (a synthetic cohort), else nothing."""
    path = config.get("synthetic_manifest")
    return [path] if path and os.path.exists(path) else []


def model_card():
    """The segmentation model's card if the configured model folder has one."""
    path = os.path.join(config.get("model", {}).get("dir", ""), "model_card.json")
    return [path] if os.path.exists(path) else []


NNUNET_KEYS = (
    "folds",
    "checkpoint",
    "channels",
    "labels",
    "region",
    "hips_margin_mm",
    "tile_step_size",
    "mirroring",
)
"""The config model keys of backend nnunetv2 (docs/backends.md)."""


def nnunet_files():
    """Backend nnunetv2: the model folder's plans, dataset.json and fold checkpoints."""
    model = config["model"]
    files = {
        "plans": f"{model['dir']}/plans.json",
        "dataset": f"{model['dir']}/dataset.json",
    }
    for fold in model["folds"]:
        files[f"fold_{fold}"] = f"{model['dir']}/fold_{fold}/{model['checkpoint']}"
    return files


def segment_model_inputs(wildcards):
    """The model files the segmentation reads: new ones rerun every shard (mtime)."""
    if config["model"]["backend"] == "nnunetv2":
        return nnunet_files()
    return {
        "weights": f"{config['model']['dir']}/model.pt",
        "card": f"{config['model']['dir']}/model_card.json",
    }


def segment_model_args(wildcards, input):
    """`myoflow segment` options naming the model and, for nnunetv2, how to use it."""
    model = config["model"]
    if model["backend"] != "nnunetv2":
        return f"--backend myoflow --model-card {shlex.quote(str(input.card))}"
    margins = model["hips_margin_mm"]
    args = [
        f"--backend nnunetv2 --nnunet-dir {shlex.quote(model['dir'])}",
        "--folds " + " ".join(str(fold) for fold in model["folds"]),
        f"--checkpoint {shlex.quote(model['checkpoint'])}",
        "--channels " + " ".join(model["channels"]),
        "--labels "
        + " ".join(f"{int(value)}={name}" for value, name in model["labels"].items()),
        f"--region {model['region']} --tile-step-size {model['tile_step_size']}",
        "--hips-margin-mm "
        + " ".join(
            str(margins[k])
            for k in ("lateral", "anterior", "posterior", "superior", "inferior")
        ),
    ]
    return " ".join(args + ([] if model["mirroring"] else ["--no-mirroring"]))


NNUNET_CPU_SECONDS = {"hips": 80, "whole": 435}
"""Wall seconds per full-size UK Biobank participant of the nnunetv2 backend on 2 shared
CPU threads, by region (bench/nnunet_backend.py --size full: a network of nnU-Net's
default widths, one fold, no mirroring; docs/backends.md)."""


def segment_runtime_minutes():
    """The segmentation job's time limit: the V-Net's 30 minutes, or for nnunetv2 the
    measured CPU seconds per participant times the shard size, folds and mirroring (8
    passes), with half again as margin. On a GPU it is far less; the limit only caps it.
    """
    model = config["model"]
    if model["backend"] != "nnunetv2":
        return 30
    seconds = NNUNET_CPU_SECONDS[model["region"]] * len(model["folds"])
    seconds *= 8 if model["mirroring"] else 1
    return max(30, math.ceil(1.5 * seconds * config["shards"]["size"] / 60))


def model_identity():
    """What decides the configured model's masks, as its card states it ("" without one):
    the sha256 of its weights and its per-label decision thresholds. Backend nnunetv2: the
    sha256 of its plans, dataset.json and checkpoints, and the settings of NNUNET_KEYS
    (hashing reads the checkpoints at parse time: 0.9 s per 256 MiB here).

    A param of the segmentation: weights unpacked from an archive or copied with their
    old mtimes are older than the masks, so the mtime trigger alone would miss them, and
    recalibrated thresholds change the masks without touching the weights. One small JSON
    read at parse time (the job itself checks the weights against the card).
    """
    if config["model"]["backend"] == "nnunetv2":
        from myoflow.segment.nnunet_backend import sha256_of

        if not all(os.path.exists(path) for path in nnunet_files().values()):
            return ""  # Snakemake reports the missing inputs
        hashes = {name: sha256_of(path) for name, path in nnunet_files().items()}
        settings = {key: config["model"][key] for key in NNUNET_KEYS}
        return json.dumps(
            {"sha256": hashes, "settings": settings}, sort_keys=True, default=str
        )
    for path in model_card():
        with open(path) as handle:
            card = json.load(handle)
        thresholds = json.dumps(
            card.get("config", {}).get("thresholds") or {}, sort_keys=True
        )
        return f"{card.get('weights_sha256', '')} thresholds {thresholds}"
    return ""


def training_split(training):
    """The held-out options of `myoflow train`: a k-fold fold, or a share of the pairs."""
    if training.get("folds") is not None:
        return f"--folds {training['folds']} --fold {training['fold']}"
    return f"--val-fraction {training['val_fraction']}"


def training_budget(training):
    """The training time budget for --max-minutes (text: it may be fractional); "0" when
    the config sets none, which the commands read as no budget."""
    return str(training.get("max_minutes") or 0)


def intensity_flag(training):
    """` --intensity-augmentation` when config training.intensity_augmentation is true
    (a param: switching it retrains), else nothing."""
    return " --intensity-augmentation" if training.get("intensity_augmentation") else ""


def training_start(training):
    """The card of the model training starts from (--init-from), if any, as an input."""
    start = training.get("init_from")
    return [] if start is None else [f"{start}/model_card.json"]


def calibration_pairs(wildcards):
    """The calibration pairs TSV; asked for only when the calibrate rule is wanted."""
    if not config["training"].get("calibration_pairs"):
        raise WorkflowError(
            "snakemake calibrate needs config training.calibration_pairs: a pairs TSV of "
            "annotated participants that are neither training nor held-out ones"
        )
    return config["training"]["calibration_pairs"]
