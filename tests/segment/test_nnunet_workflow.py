"""The workflow with ``model.backend: nnunetv2``: a small synthetic cohort from DICOM through
the nnU-Net segmentation, measure, gather and the report, on a tiny nnU-Net model (CPU)."""

from __future__ import annotations

import json

import nibabel as nib
import pytest
import yaml
from nnunet_helpers import make_tiny_nnunet_model, write_participant
from test_reliability import prepare_workdir, run_workflow, synthesise

from myoflow.core.io import read_tsv
from myoflow.core.labels import LABELS
from myoflow.segment.nnunet_backend import to_nnunet_layout

pytestmark = pytest.mark.workflow


def test_workflow_runs_an_nnunet_model_through_to_the_report(tmp_path):
    cohort = synthesise(tmp_path / "cohort", participants=3, seed=8)
    workdir = prepare_workdir(tmp_path / "run", cohort, shard_size=3)
    channels = write_participant(tmp_path / "body")
    affine = nib.load(tmp_path / "body" / "dixon" / "water.nii.gz").affine
    image, spacing = to_nnunet_layout([channels["water"], channels["fat"]], affine, "SimpleITKIO")
    model_dir = make_tiny_nnunet_model(tmp_path / "nnunet model", [image], [spacing])

    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["model"] |= {
        "backend": "nnunetv2",
        "dir": str(model_dir),
        "channels": ["water", "fat"],
        "labels": {value: name for name, value in LABELS.items()},
        "region": "hips",
        "tile_step_size": 1.0,
        "mirroring": False,
    }
    # Water kept after the run (the default removes it, docs/storage.md): the labels are
    # compared with the stitched grid below.
    config["keep"] = {"stitched": "water_fat"}
    path.write_text(yaml.safe_dump(config))
    run_workflow(workdir)

    (table,) = (workdir / "results" / "shards").glob("*/segment.tsv")
    segmented = read_tsv(table)
    assert segmented["status"].tolist() == ["ok"] * 3, segmented.to_string()
    participants = workdir / "results" / "participants"
    for pid in segmented["participant_id"]:
        record = json.loads((participants / pid / "seg" / "segmentation.json").read_text())
        assert record["backend"] == "nnunetv2" and record["region"] == "hips"
        water = nib.load(participants / pid / "dixon" / "water.nii.gz")
        labels = nib.load(participants / pid / "seg" / "labels.nii.gz")
        assert labels.shape == water.shape
        assert (participants / pid / "metrics.json").is_file()
    # The later stages take the nnU-Net labels as they take the V-Net's (segmentation.json
    # has what measure reads: crop_boxes, label_values).
    (measured,) = (workdir / "results" / "shards").glob("*/measure.tsv")
    assert read_tsv(measured)["status"].tolist() == ["ok"] * 3
    cohort = read_tsv(workdir / "results" / "cohort" / "participants.tsv")
    assert sorted(cohort["participant_id"]) == sorted(segmented["participant_id"])
    assert (workdir / "results" / "cohort" / "report.html").stat().st_size > 0
