"""Agreement with manual annotations: Dice and manual volumes on the workflow's grid."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from dicom_helpers import write_sheet
from test_workflow import check, copy_workflow, job_counts, snakemake

from myoflow.cli import main
from myoflow.cohort.manual import (
    ManualSheetError,
    annotated_muscles,
    manual_agreement,
    read_mask_sheet,
    score_against_manual,
)
from myoflow.core.io import read_tsv, save_nifti
from myoflow.core.labels import LABELS
from myoflow.measure.metrics import metric_keys

# Stitched-grid convention: i -> left, j -> posterior, k -> superior; RAS affine.
AFFINE = np.diag([-2.0, -2.0, 3.0, 1.0])
VOXEL_ML = 2.0 * 2.0 * 3.0 / 1000.0


def label_map() -> np.ndarray:
    """Boxes of known size: psoas major and gluteus maximus, both sides."""
    labels = np.zeros((40, 30, 30), dtype=np.uint8)
    labels[5:15, 5:15, 5:25] = LABELS["psoas_major_right"]  # 10 x 10 x 20 = 2000 voxels
    labels[25:35, 5:15, 5:25] = LABELS["psoas_major_left"]
    labels[5:15, 18:28, 2:12] = LABELS["gluteus_maximus_right"]  # 1000 voxels
    labels[25:35, 18:28, 2:12] = LABELS["gluteus_maximus_left"]
    return labels


def by_structure(rows: list[dict]) -> dict[tuple[str, str], float]:
    return {(r["structure"], r["side"]): r["dice"] for r in rows}


def test_identical_maps_score_one_and_give_the_voxel_volumes():
    labels = label_map()
    rows, volumes = score_against_manual("P1", labels, AFFINE, labels, AFFINE)
    assert set(by_structure(rows).values()) == {1.0}
    assert {s for s, _ in by_structure(rows)} == {"psoas_major", "gluteus_maximus"}
    assert volumes["manual_vol_psoas_major_left_ml"] == pytest.approx(2000 * VOXEL_ML)
    assert volumes["manual_vol_gluteus_maximus_total_ml"] == pytest.approx(2000 * VOXEL_ML)
    # The names pair with the automatic metrics for Bland-Altman.
    assert {k.removeprefix("manual_") for k in volumes} <= set(metric_keys())


def test_a_one_voxel_shift_gives_the_dice_of_the_overlap():
    labels = label_map()
    manual = np.roll(labels, 1, axis=0)  # every box moves by one voxel of ten along i
    rows, _ = score_against_manual("P1", labels, AFFINE, manual, AFFINE)
    assert by_structure(rows)[("psoas_major", "left")] == pytest.approx(0.9)
    assert by_structure(rows)[("gluteus_maximus", "right")] == pytest.approx(0.9)


def test_a_manual_map_on_a_finer_grid_is_resampled_onto_the_workflow_grid():
    labels = label_map()
    fine = labels.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    fine_affine = AFFINE.copy()
    fine_affine[:3, :3] /= 2.0
    # Voxel centres of the fine grid are offset by half a fine voxel from the coarse ones.
    fine_affine[:3, 3] = AFFINE[:3, :3] @ np.full(3, -0.25)
    rows, volumes = score_against_manual("P1", labels, AFFINE, fine, fine_affine)
    assert set(by_structure(rows).values()) == {1.0}
    assert volumes["manual_vol_psoas_major_right_ml"] == pytest.approx(2000 * VOXEL_ML)


def test_only_the_annotated_muscles_are_scored():
    labels = label_map()
    manual = np.where(np.isin(labels, [LABELS["psoas_major_left"], LABELS["psoas_major_right"]]),
                      labels, 0)  # fmt: skip
    assert annotated_muscles(manual) == ["psoas_major"]
    rows, volumes = score_against_manual("P1", labels, AFFINE, manual, AFFINE)
    assert {s for s, _ in by_structure(rows)} == {"psoas_major"}
    assert not any("gluteus" in key for key in volumes)


def write_cohort(tmp_path):
    """Three annotated participants: one scored, one never segmented, one broken mask."""
    participants = tmp_path / "results" / "participants"
    save_nifti(participants / "P1" / "seg" / "labels.nii.gz", label_map(), AFFINE)
    (participants / "P2").mkdir(parents=True)
    manual = tmp_path / "manual"
    save_nifti(manual / "P1.nii.gz", np.roll(label_map(), 1, axis=1), AFFINE)
    save_nifti(manual / "P2.nii.gz", label_map(), AFFINE)
    save_nifti(participants / "P3" / "seg" / "labels.nii.gz", label_map(), AFFINE)
    (manual / "P3.nii.gz").write_bytes(b"not a nifti")
    sheet = tmp_path / "manual" / "masks.tsv"
    sheet.write_text("participant_id\tlabels\nP1\tP1.nii.gz\nP2\tP2.nii.gz\nP3\tP3.nii.gz\n")
    return sheet, participants


def test_every_listed_participant_is_scored_or_skipped_with_its_reason(tmp_path):
    sheet, participants = write_cohort(tmp_path)
    result = manual_agreement(read_mask_sheet(sheet), participants, log=lambda line: None)
    status = result.status.set_index("participant_id")
    assert status["status"].to_dict() == {"P1": "scored", "P2": "skipped", "P3": "skipped"}
    assert status.loc["P2", "reason"] == "not_segmented"
    assert status.loc["P3", "reason"] == "manual_unreadable"
    assert "P3.nii.gz" in status.loc["P3", "detail"]
    assert set(result.dice["participant_id"]) == {"P1"}
    assert by_structure(result.dice.to_dict("records"))[("psoas_major", "left")] == 0.9
    assert list(result.volumes["participant_id"]) == ["P1"]


def test_the_command_writes_the_three_tables(tmp_path, capsys):
    sheet, participants = write_cohort(tmp_path)
    out = tmp_path / "out"
    code = main(
        ["manual-agreement", "--masks", str(sheet), "--participants-dir", str(participants),
         "--dice-out", str(out / "dice.tsv"), "--volumes-out", str(out / "volumes.tsv"),
         "--status-out", str(out / "status.tsv")]
    )  # fmt: skip
    assert code == 0
    assert "1 of 3 annotated participants scored" in capsys.readouterr().out
    assert len(read_tsv(out / "dice.tsv")) == 2 * 2  # 2 muscles (no complete group) x 2 sides
    assert read_tsv(out / "volumes.tsv")["participant_id"].tolist() == ["P1"]
    assert len(read_tsv(out / "status.tsv")) == 3


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("../x\tP1.nii.gz\n", "line 2: participant_id '../x' is not valid"),
        ("P1\tP1.nii.gz\nP1\tP2.nii.gz\n", "line 3: participant_id 'P1' is listed twice"),
        ("P1\t\n", "line 2: participant 'P1' has an empty labels path"),
    ],
)
def test_a_bad_sheet_row_is_named(tmp_path, rows, message):
    sheet = tmp_path / "masks.tsv"
    sheet.write_text("participant_id\tlabels\n" + rows)
    with pytest.raises(ManualSheetError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_mask_sheet(sheet)


@pytest.mark.workflow
def test_the_rule_scores_configured_masks_and_feeds_the_statistics(tmp_path):
    sheet, participants = write_cohort(tmp_path)
    copy_workflow(tmp_path)
    (tmp_path / "data").mkdir()
    write_sheet(
        tmp_path / "data" / "participants.tsv",
        [(p, f"dicom/{p}", "r1") for p in ("P1", "P2", "P3")],
    )
    for shard in ("r1-0000", "r1-0001"):  # shard size 2; the segmentation stands given
        (tmp_path / "results" / "shards" / shard).mkdir(parents=True)
        (tmp_path / "results" / "shards" / shard / "segment.tsv").write_text("participant_id\n")
    config_path = tmp_path / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config |= {"participants": "data/participants.tsv", "shards": {"size": 2}}
    config["stats"]["manual_annotations"]["masks"] = str(sheet.relative_to(tmp_path))
    config_path.write_text(yaml.safe_dump(config))
    target = "results/cohort/manual/dice.tsv"
    run = ["--cores", "1", "--allowed-rules", "cohort_manual_agreement", "--", target]
    output = check(snakemake(*run, cwd=tmp_path))
    assert job_counts(output) == {"cohort_manual_agreement": 1}
    assert set(read_tsv(tmp_path / target)["participant_id"]) == {"P1"}
    status = read_tsv(tmp_path / "results" / "cohort" / "manual" / "status.tsv")
    assert status["reason"].fillna("").tolist() == ["", "not_segmented", "manual_unreadable"]
    # The statistics take the computed tables as their manual annotations.
    for table in ("participants", "csa_profiles", "exclusions"):  # the gather stands given
        (tmp_path / "results" / "cohort" / f"{table}.tsv").write_text("participant_id\n")
    statistics = ["--allowed-rules", "cohort_statistics", "--", "results/cohort/tables"]
    planned = check(snakemake("-n", "-p", *statistics, cwd=tmp_path))
    assert "--manual results/cohort/manual/volumes.tsv" in planned
    assert "--dice results/cohort/manual/dice.tsv" in planned
    # Masks and precomputed tables together are refused, naming the setting.
    config["stats"]["manual_annotations"]["dice"] = "data/dice.tsv"
    config_path.write_text(yaml.safe_dump(config))
    refused = snakemake("-n", target, cwd=tmp_path)
    assert refused.returncode != 0
    assert "give `masks` (the workflow scores them) or the tables ['dice'], not both" in (
        refused.stdout + refused.stderr
    )
