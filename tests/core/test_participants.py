"""The participant sheet: loading, validation messages, DICOM path resolution."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml

from myoflow.core.sheet import (
    PARTICIPANT_ID_PATTERN,
    PARTICIPANT_WILDCARD,
    RELEASE_PATTERN,
    SheetError,
    load_sheet,
    resolve_dicom_path,
    validate_sheet,
)

SCHEMA = Path(__file__).parents[2] / "config" / "schemas" / "participants.schema.yaml"


def sheet(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["participant_id", "dicom", "release"])


GOOD = [("P001", "dicom/P001", "r1"), ("0042", "dicom/0042.zip", "r1")]


def test_valid_sheet_passes():
    validate_sheet(sheet(*GOOD))


@pytest.mark.parametrize(
    "bad_id",
    ["../x", "a b", "", " P1", "P1 ", "-P1", "_P1", "a/b", "a.b", "P\u00e9", "x" * 65],
)
def test_invalid_participant_id_names_row_and_value(bad_id):
    with pytest.raises(SheetError) as info:
        validate_sheet(sheet(*GOOD, (bad_id, "dicom/x", "r1")))
    assert "data row 3 (line 4)" in str(info.value)
    assert repr(bad_id) in str(info.value)


def test_longest_valid_id_is_accepted():
    validate_sheet(sheet(*GOOD, ("x" * 64, "dicom/x", "r1")))


def test_duplicate_id_names_both_rows():
    with pytest.raises(
        SheetError, match=r"data row 3 \(line 4\): participant_id 'P001' repeats data row 1"
    ):
        validate_sheet(sheet(*GOOD, ("P001", "dicom/other", "r2")))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("P003", "", "r1"), "empty dicom path"),
        (("P003", "   ", "r1"), "empty dicom path"),
        (("P003", "dicom/P003", ""), "empty release"),
        (("P003", "dicom/P003", "../r1"), "release '../r1'"),
        (("P003", "dicom/P003", "r 1"), "release 'r 1'"),
    ],
)
def test_empty_dicom_or_bad_release_names_row(row, message):
    with pytest.raises(SheetError, match=re.escape(message)) as info:
        validate_sheet(sheet(*GOOD, row))
    assert "data row 3 (line 4)" in str(info.value)
    assert "'P003'" in str(info.value)


def test_missing_column_and_empty_sheet():
    with pytest.raises(SheetError, match="release"):
        validate_sheet(sheet(*GOOD).drop(columns="release"))
    with pytest.raises(SheetError, match="no participants"):
        validate_sheet(sheet())


def test_load_sheet_keeps_ids_as_text_and_blank_cells_empty(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tdicom\trelease\tage\n0042\td/0042\tr1\t61\n0043\td/0043\t\t\n")
    loaded = load_sheet(path)
    assert list(loaded["participant_id"]) == ["0042", "0043"]
    assert loaded.loc[1, "release"] == ""
    with pytest.raises(SheetError, match=r"data row 2 \(line 3\).*empty release"):
        validate_sheet(loaded)


def test_load_sheet_errors_name_the_file(tmp_path):
    with pytest.raises(SheetError, match="not found: .*missing.tsv"):
        load_sheet(tmp_path / "missing.tsv")
    no_dicom = tmp_path / "no_dicom.tsv"
    no_dicom.write_text("participant_id\trelease\nP1\tr1\n")
    with pytest.raises(SheetError, match="no_dicom.tsv lacks column.*dicom"):
        load_sheet(no_dicom)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(SheetError, match="empty.tsv is empty"):
        load_sheet(empty)


def test_resolve_dicom_path_relative_to_the_sheet_folder(tmp_path):
    sheet_path = tmp_path / "cohort" / "participants.tsv"
    assert resolve_dicom_path(sheet_path, "dicom/P1.zip") == tmp_path / "cohort/dicom/P1.zip"
    assert resolve_dicom_path("participants.tsv", "dicom/P1") == Path("dicom/P1")
    assert resolve_dicom_path(sheet_path, "/data/ukbb/P1") == Path("/data/ukbb/P1")


def test_schema_states_the_same_rules_as_the_package():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["properties"]["participant_id"]["pattern"] == PARTICIPANT_ID_PATTERN
    assert schema["properties"]["release"]["pattern"] == RELEASE_PATTERN
    assert set(schema["required"]) == {"participant_id", "dicom", "release"}
    validator = jsonschema.Draft202012Validator(schema)
    for participant_id in ["P001", "0042", "../x", "a b", "", "x" * 64, "x" * 65]:
        row = {"participant_id": participant_id, "dicom": "d", "release": "r1"}
        by_package = re.fullmatch(PARTICIPANT_ID_PATTERN, participant_id) is not None
        assert validator.is_valid(row) == by_package, participant_id
    assert not validator.is_valid({"participant_id": "P1", "dicom": " ", "release": "r1"})


def test_wildcard_constraint_matches_exactly_the_valid_ids():
    for participant_id in ["P001", "0042", "a-b_c", "x" * 64]:
        assert re.fullmatch(PARTICIPANT_WILDCARD, participant_id)
    for participant_id in ["../x", "a/b", "a b", "", "-x"]:
        assert not re.fullmatch(PARTICIPANT_WILDCARD, participant_id)
