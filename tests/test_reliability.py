"""Reliability on real workflow runs (issue 8): bad inputs, identifier leaks, determinism and
SIGKILL, on small synthetic UK Biobank cohorts from DICOM to results/cohort/report.html.

Three real runs share the module: a clean cohort, the same seed with ~20 % of participants
damaged by ``myoflow synth --bad-inputs`` (one case of ``myoflow.synth.corrupt.CASES``
each), and the clean cohort again in another folder, killed with SIGKILL at four points
and resumed until done. The killed-and-resumed run is also the second clean run of the
determinism check: it computed everything again in its own folder, so byte-identical
tables prove determinism and crash consistency at once (``bench/reliability.py
--second-run`` adds an uninterrupted second run).

The runs convert at the synthetic data's native spacing (an eighth of the voxels of the
UK Biobank grid) and make every configurable QC flag a warning, so that QC (which depends
on the model's quality; an empty muscle still fails) hides fewer later exclusions, such
as the phenotype checks. Neither changes what is tested.

The helpers are plain functions so that ``bench/reliability.py`` runs the same checks on a
larger cohort.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gzip
import json
import os
import re
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from test_workflow import BIN, WORKFLOW_FILES, copy_workflow

from myoflow.core.io import read_tsv, save_nifti
from myoflow.synth import corrupt

pytestmark = pytest.mark.workflow

PARTICIPANTS = 5
SHARD_SIZE = 3
SEED = 8
BAD_FRACTION = 0.2
"""Five small participants in two shards; one of them (20 %) damaged."""

RUN_TIMEOUT_S = 1800
"""Per Snakemake invocation: about a minute unloaded, far more on a shared machine."""

# ---------------------------------------------------------------- what each case must give

EXPECTED_OUTCOMES: Mapping[str, tuple[str, str, str, str] | None] = {
    # case: (stage, step, reason, a fragment of the detail) in exclusions.tsv
    "truncated_file": ("ingestion", "convert", "corrupt_file", "shorter than its pixel data"),
    "zero_byte_file": ("ingestion", "convert", "corrupt_file", "empty file"),
    "duplicated_slice": ("ingestion", "convert", "invalid_series", "duplicate_slices"),
    "station_gap": ("ingestion", "convert", "station_gap", ""),
    "mixed_participants": ("ingestion", "convert", "mixed_participants", ""),
    "inconsistent_orientation": ("ingestion", "convert", "orientation_mismatch", ""),
    "missing_channel": ("ingestion", "convert", "missing_channel", ""),
    "missing_station": ("ingestion", "convert", "missing_station", ""),
    "corrupt_zip": ("ingestion", "inventory", "zip_corrupt", ""),
    "missing_phenotype": ("phenotype", "gather", "missing_phenotype", ""),
    "absurd_phenotype": ("phenotype", "gather", "implausible_phenotype", ""),
    # Junk among the slices is ignored: the participant goes on as in the clean run.
    "non_dicom_files": None,
    "non_mr_file": None,
    "ct_series": None,
}
"""Outcome of every bad-input case; ``None``: the same outcome and outputs as when clean.

Unsafe and duplicate participant ids cannot be excluded per participant: the workflow
refuses the whole sheet at start-up (``test_unsafe_ids_are_refused_at_start_up...``).
"""

STAGES_BEFORE_IMAGES = {"ingestion"}
"""Stages that exclude a participant before any image of it is written: such cases leave
no masks or metrics to compare with the clean run."""


# ---------------------------------------------------------------- cohorts and runs


def synthesise(out: Path, participants: int, seed: int, bad_inputs: float = 0.0) -> Path:
    """``myoflow synth`` a small UK Biobank cohort into ``out`` (as a user would)."""
    command = [str(BIN / "myoflow"), "synth", "--out", str(out), "--size", "small"]
    command += ["--participants", str(participants), "--protocol", "ukbb", "--seed", str(seed)]
    command += ["--workers", "2"]
    if bad_inputs:
        command += ["--bad-inputs", str(bad_inputs)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


def prepare_workdir(workdir: Path, cohort: Path, shard_size: int) -> Path:
    """A copy of the workflow configured for ``cohort`` (see the module docstring)."""
    workdir.mkdir(parents=True, exist_ok=True)
    copy_workflow(workdir)
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config |= {
        "participants": str(cohort / "participants.tsv"),
        "phenotypes": str(cohort / "phenotypes.tsv"),
        "shards": {"size": shard_size},
    }
    config["ingest"]["grid"]["spacing_mm"] = "native"
    config["qc"]["severities"] = dict.fromkeys(config["qc"]["severities"], "warn")
    config["model"] |= {"device": "cpu", "threads": 1}  # two shards at a time on 2 cores
    path.write_text(yaml.safe_dump(config))
    return workdir


def start_snakemake(workdir: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """Start Snakemake in its own process group; its console goes to workdir/console/NN.log.

    Snakemake runs its jobs in its own process group, so killing the group kills them too.
    """
    console = workdir / "console"
    console.mkdir(exist_ok=True)
    log = console / f"{len(list(console.glob('*.log'))):02d}.log"
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "snakemake"), "--profile", "config/profiles/local", *args],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, log


def run_snakemake(workdir: Path, *args: str, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    """Run Snakemake to its end; return its exit status and console output."""
    process, log = start_snakemake(workdir, *args)
    try:
        process.wait(timeout)
    except BaseException:  # a timeout, or Ctrl-C: its own session would outlive us
        kill_group(process)
        raise
    return process.returncode, log.read_text()


def run_workflow(workdir: Path, timeout: float = RUN_TIMEOUT_S) -> str:
    """One complete run of every target (2 cores); its console output.

    Raises:
        RuntimeError: Snakemake failed.
    """
    code, output = run_snakemake(workdir, "--cores", "2", "--rerun-incomplete", timeout=timeout)
    if code != 0:
        raise RuntimeError(f"snakemake exited with {code} in {workdir}:\n{output[-6000:]}")
    return output


def _group_members(group: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(stat.parent.name))
    return members


def kill_group(process: subprocess.Popen, wait_s: float = 30.0) -> None:
    """SIGKILL Snakemake and every job of its process group; wait until none is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + wait_s
    while _group_members(process.pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of group {process.pid} outlived SIGKILL")
        time.sleep(0.05)


@dataclass(frozen=True)
class KillPoint:
    """When to kill a run: ``reached(workdir, seconds since the start)``."""

    name: str
    reached: Callable[[Path, float], bool]


def appears(pattern: str) -> Callable[[Path, float], bool]:
    """A kill condition: a path matching ``pattern`` (a glob under the workdir) was written
    since this invocation started (an older one, e.g. left by an earlier kill, does not count).
    """

    def reached(workdir: Path, elapsed: float) -> bool:
        since = time.time() - elapsed - 0.05  # file times come from a coarser clock
        for path in workdir.glob(pattern):
            with contextlib.suppress(FileNotFoundError):  # renamed since it was listed
                if path.stat().st_mtime >= since:
                    return True
        return False

    return reached


def after_seconds(seconds: float) -> Callable[[Path, float], bool]:
    """A kill condition: the run has gone on this long."""
    return lambda _workdir, elapsed: elapsed >= seconds


@dataclass(frozen=True)
class Kill:
    """One cycle: whether the run was killed (False: it ended before the point) and when,
    and the temporary files an interrupted write left at that moment."""

    point: str
    killed: bool
    seconds: float
    temporaries: tuple[str, ...]


def run_with_kills(
    workdir: Path, points: Sequence[KillPoint], poll_s: float = 0.01
) -> tuple[list[Kill], str]:
    """Run the workflow, killing it (SIGKILL) at each point in turn, then run it to its end.

    Before every rerun the stale lock a killed Snakemake leaves is removed
    (``snakemake --unlock``), as a user must; reruns pass ``--rerun-incomplete``.

    Returns:
        The cycles, and the console output of the final, complete run.

    Raises:
        RuntimeError: a run that was not killed, or the final run, failed.
    """
    kills: list[Kill] = []
    for point in points:
        if kills and kills[-1].killed:
            run_snakemake(workdir, "--unlock")
        process, log = start_snakemake(workdir, "--cores", "2", "--rerun-incomplete")
        started = time.monotonic()
        while process.poll() is None and not point.reached(workdir, time.monotonic() - started):
            if time.monotonic() - started > RUN_TIMEOUT_S:
                kill_group(process)
                raise RuntimeError(f"{point.name}: no kill point within {RUN_TIMEOUT_S} s")
            time.sleep(poll_s)
        seconds = time.monotonic() - started
        killed = process.poll() is None
        if killed:
            kill_group(process)
        elif process.returncode != 0:
            raise RuntimeError(f"run before {point.name} failed:\n{log.read_text()[-6000:]}")
        left = tuple(str(p.relative_to(workdir)) for p in temporaries(workdir))
        kills.append(Kill(point.name, killed, seconds, left))
    if kills and kills[-1].killed:
        run_snakemake(workdir, "--unlock")
    return kills, run_workflow(workdir)


def pytest_kill_points() -> list[KillPoint]:
    """Four points of one run, in the order the stages reach them: mid-write of an image
    (the only write long enough to catch by polling), mid-shard twice, and mid-way through
    a directory output. Each is reached whatever the model's quality (no figure is drawn
    when QC leaves nobody, so none is waited for)."""
    return [
        KillPoint(
            "convert: while a stitched NIfTI is written",
            appears("results/participants/*/dixon/.*.nii.gz"),
        ),
        KillPoint(
            "segment: after the first mask of a shard",
            appears("results/participants/*/seg/labels.nii.gz"),
        ),
        KillPoint(
            "measure: after the first overlay of a shard",
            appears("results/participants/*/qc/overlay.png"),
        ),
        KillPoint(
            "cohort statistics: after the first table of the directory output",
            appears("results/cohort/tables/*.tsv"),
        ),
    ]


# ---------------------------------------------------------------- reading what a run wrote


def temporaries(workdir: Path) -> list[Path]:
    """Hidden files under results/: what an interrupted atomic write leaves behind
    (``myoflow.core.io.atomic_path`` names them ``.{name}.{random}{suffixes}``); Snakemake's
    own ``.snakemake_timestamp`` of directory outputs is not one."""
    return sorted(
        path
        for path in (workdir / "results").rglob(".*")
        if path.is_file() and path.name != ".snakemake_timestamp"
    )


def _check_readable(path: Path) -> None:
    """Read ``path`` whole as its kind; raise if it is truncated or malformed."""
    name = path.name
    if name.endswith(".tsv"):
        text = path.read_text()
        if not text.endswith("\n"):
            raise ValueError("does not end with a newline")
        pd.read_csv(path, sep="\t")
    elif name.endswith(".json"):
        json.loads(path.read_text())
    elif name.endswith((".nii.gz", ".nii")):
        np.asarray(nib.load(path).dataobj)
    elif name.endswith(".png"):
        from PIL import Image

        with Image.open(path) as image:
            image.load()
    elif name.endswith(".pdf"):
        data = path.read_bytes()
        if not (data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")):
            raise ValueError("not a whole PDF")
    elif name.endswith(".html"):
        if not path.read_text().rstrip().endswith("</html>"):
            raise ValueError("not a whole HTML page")
    else:
        raise ValueError("no reader for this kind of output")


def unreadable_outputs(workdir: Path) -> dict[str, str]:
    """Every non-hidden file under results/ that cannot be read whole: path -> why."""
    problems = {}
    for path in sorted((workdir / "results").rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            _check_readable(path)
        except Exception as err:  # any failure to read is the finding
            problems[str(path.relative_to(workdir))] = f"{type(err).__name__}: {err}"
    return problems


def cohort_tables(workdir: Path) -> dict[str, bytes]:
    """results/cohort/*.tsv and results/cohort/tables/*.tsv, as bytes by relative path."""
    cohort = workdir / "results" / "cohort"
    paths = sorted(cohort.glob("*.tsv")) + sorted((cohort / "tables").glob("*.tsv"))
    return {str(p.relative_to(cohort)): p.read_bytes() for p in paths}


def label_map(workdir: Path, participant: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A participant's segmentation (labels, affine), or None when it has none."""
    path = workdir / "results" / "participants" / participant / "seg" / "labels.nii.gz"
    if not path.exists():
        return None
    image = nib.load(path)
    return np.asarray(image.dataobj), image.affine


def differences(first: Path, second: Path, participants: Sequence[str]) -> list[str]:
    """What differs between two runs for these participants: metrics.json bytes and masks
    (a file present in one run only is a difference)."""
    found = []
    for pid in participants:
        metrics = [
            root / "results" / "participants" / pid / "metrics.json" for root in (first, second)
        ]
        held = [p.read_bytes() if p.exists() else None for p in metrics]
        if held[0] != held[1]:
            found.append(f"{pid}: metrics.json differs")
        masks = [label_map(root, pid) for root in (first, second)]
        if (masks[0] is None) != (masks[1] is None):
            found.append(f"{pid}: a mask in one run only")
        elif masks[0] is not None and not (
            np.array_equal(masks[0][0], masks[1][0]) and np.array_equal(masks[0][1], masks[1][1])
        ):
            found.append(f"{pid}: masks differ")
    return found


def has_clean_outputs(case: str | None) -> bool:
    """Whether a participant with this bad-input case (None: none) must have the same
    per-participant outputs as when clean: all but those its case excludes at ingestion."""
    expected = EXPECTED_OUTCOMES[case] if case else None
    return expected is None or expected[0] not in STAGES_BEFORE_IMAGES


def outcomes(workdir: Path) -> dict[str, dict[str, str]]:
    """Each participant's place in the cohort: ``included`` (participants.tsv) or the
    stage, step, reason and detail of its row in exclusions.tsv (which wins where both
    name a participant: :func:`lost_participants` reports that)."""
    cohort = workdir / "results" / "cohort"
    placed = {
        pid: {"stage": "included", "step": "", "reason": "", "detail": ""}
        for pid in read_tsv(cohort / "participants.tsv")["participant_id"]
    }
    excluded = read_tsv(cohort / "exclusions.tsv").fillna("")
    for row in excluded.to_dict("records"):
        placed[row["participant_id"]] = {k: str(row[k]) for k in ("stage", "step", "reason")} | {
            "detail": str(row["detail"])
        }
    return placed


def lost_participants(cohort: Path, workdir: Path) -> list[str]:
    """Sheet participants in neither participants.tsv nor exclusions.tsv, or in both, or
    more than once (exclusions.tsv is read row by row)."""
    sheet = read_tsv(cohort / "participants.tsv")["participant_id"].tolist()
    tables = workdir / "results" / "cohort"
    rows = (
        read_tsv(tables / "participants.tsv")["participant_id"].tolist()
        + read_tsv(tables / "exclusions.tsv")["participant_id"].tolist()
    )
    counts = pd.Series(rows).value_counts()
    return sorted({p for p in sheet if counts.get(p, 0) != 1} | (set(rows) - set(sheet)))


STAGES = ("ingestion", "landmarks", "segmentation", "qc", "metrics", "phenotype")
"""The cohort's stages in order (myoflow.cohort.stats.cohort.STAGES): a participant's row in
exclusions.tsv names the first that excluded it."""


def hidden_by_earlier_exclusion(case: str, clean: Mapping[str, str]) -> bool:
    """Whether the clean run already excluded this participant before the stage its case
    must exclude it at (e.g. a phenotype case when QC fails everyone with a weak model):
    then only that earlier exclusion can be seen."""
    expected = EXPECTED_OUTCOMES[case]
    return (
        expected is not None
        and clean["stage"] != "included"
        and STAGES.index(clean["stage"]) < STAGES.index(expected[0])
    )


def wrong_outcomes(
    cases: pd.DataFrame, bad: Mapping[str, dict], clean: Mapping[str, dict]
) -> list[str]:
    """Damaged participants whose outcome is not the one their case implies.

    An excluding case must be excluded at its stage with its reason (and a detail naming
    the damage), unless :func:`hidden_by_earlier_exclusion`; an ignored-junk case, or a
    hidden one, must end as in the clean run.
    """
    wrong = []
    for pid, case in zip(cases["participant_id"], cases["case"], strict=True):
        got, before = bad[pid], clean[pid]
        expected = EXPECTED_OUTCOMES[case]
        if expected is None or hidden_by_earlier_exclusion(case, before):
            wanted = {k: before[k] for k in ("stage", "step", "reason")}
            if {k: got[k] for k in wanted} != wanted:
                wrong.append(f"{pid} ({case}): {got}, expected as clean: {wanted}")
            continue
        stage, step, reason, fragment = expected
        if (got["stage"], got["step"], got["reason"]) != (stage, step, reason) or (
            fragment not in got["detail"]
        ):
            wrong.append(f"{pid} ({case}): {got}, expected {stage}/{step}/{reason} '{fragment}'")
    return wrong


def tracebacks(workdir: Path) -> list[str]:
    """Logs of a run (job logs, Snakemake's logs, the console) that hold a Traceback."""
    logs = [
        *(workdir / "logs").rglob("*.log"),
        *(workdir / ".snakemake" / "log").glob("*.log"),
        *(workdir / "console").glob("*.log"),
    ]
    return sorted(str(p.relative_to(workdir)) for p in logs if "Traceback" in p.read_text())


# ---------------------------------------------------------------- the identifier scan

_NUMBER = re.compile(rb"(?<![0-9])[0-9]{8}(?![0-9])")
_ISO_DATE = re.compile(rb"(?<![0-9])([0-9]{4})-([0-9]{2})-([0-9]{2})(?![0-9])")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PDF_STREAM = re.compile(rb"stream\r?\n(.*?)endstream", re.DOTALL)
_DATA_URI = re.compile(rb"data:[A-Za-z0-9/+.-]+;base64,([A-Za-z0-9+/=]+)")
_DICOM_FIELDS = {
    "PatientName": "name",
    "PatientID": "patient id",
    "PatientBirthDate": "birth date",
    "InstitutionName": "institution",
    "AccessionNumber": "accession number",
    "StudyInstanceUID": "study uid",
    "StudyDate": "study date",
}


@dataclass(frozen=True)
class Identifiers:
    """Planted identifiers: ``text`` (searched as substrings, any case) and ``numbers``
    (8-digit ids and dates, searched as whole numbers so that float digits cannot match),
    each mapped to what it is."""

    text: Mapping[bytes, str]
    numbers: Mapping[bytes, str]


def _variants(field: str, value: str) -> dict[bytes, str]:
    """The text and number forms of one planted value."""
    value = value.strip()
    if not value:
        return {}
    if re.fullmatch(r"[0-9]{8}", value):  # DICOM dates, and numbers cut from ids
        return {value.encode(): field}
    out = {value.lower().encode(): field}
    if field == "name":  # DICOM PN: Family^Given
        parts = [p for p in value.split("^") if p]
        out |= {p.lower().encode(): f"{field} part" for p in parts}
        out[" ".join(reversed(parts)).lower().encode()] = field
    for digits in re.findall(r"[0-9]{8}", value) if field == "patient id" else []:
        out[digits.encode()] = f"{field} digits"
    return out


def planted_identifiers(cohorts: Sequence[Path]) -> Identifiers:
    """Every identifier the synthetic DICOM of these cohorts carry: ``identifiers.tsv`` and
    the headers of one file of every series (which adds e.g. the other person that the
    ``mixed_participants`` case slips in, and the study UIDs)."""
    found: dict[bytes, str] = {}
    for cohort in cohorts:
        table = pd.read_csv(cohort / "identifiers.tsv", sep="\t", dtype=str).fillna("")
        for field, column in (
            ("name", "patient_name"),
            ("patient id", "patient_id"),
            ("birth date", "birth_date"),
            ("institution", "institution"),
            ("study date", "study_date"),
        ):
            for value in table[column]:
                found |= _variants(field, value)
        for series in sorted((cohort / "dicom").glob("*/*")):
            for path in sorted(series.glob("*.dcm"))[:3]:
                try:
                    header = pydicom.dcmread(path, stop_before_pixels=True)
                except (pydicom.errors.InvalidDicomError, OSError, ValueError):
                    continue  # the damaged file of a bad-input case
                for keyword, field in _DICOM_FIELDS.items():
                    found |= _variants(field, str(header.get(keyword, "") or ""))
                break
    numbers = {k: v for k, v in found.items() if k.isdigit()}
    text = {k: v for k, v in found.items() if not k.isdigit()}
    return Identifiers(text=text, numbers=numbers)


def _png_text(data: bytes) -> Iterator[bytes]:
    """Every chunk of a PNG but its pixels, text chunks decompressed."""
    at = len(_PNG_SIGNATURE)
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"IDAT":
            continue
        key, _, rest = body.partition(b"\0")
        if kind == b"zTXt" and rest:
            yield key + b" " + zlib.decompressobj().decompress(rest[1:])
        elif kind == b"iTXt" and len(rest) >= 2:
            compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
            yield key + b" " + (zlib.decompressobj().decompress(text) if compressed else text)
        else:
            yield kind + b" " + body


def readable_parts(path: Path) -> Iterator[bytes]:
    """What of a file could carry text: plain files whole, embedded base64 (data: URIs, as
    the report's figures) decoded; gzip decompressed; of a NIfTI the header and extensions
    (the voxels are numbers); of a PNG every chunk but the pixels; of a PDF the objects and
    the decompressed streams. Damaged files give what can be decoded."""
    yield from _parts(path.name, path.read_bytes())


def _parts(name: str, data: bytes) -> Iterator[bytes]:
    nifti = name.endswith((".nii.gz", ".nii"))
    if data[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(wbits=31)
        data = inflate.decompress(data, 1 << 16) if nifti else inflate.decompress(data)
    if nifti and len(data) >= 112:
        (offset,) = struct.unpack("<f", data[108:112])  # vox_offset: where the voxels start
        yield data[: max(348, int(offset))]
    elif data.startswith(_PNG_SIGNATURE):
        yield from _png_text(data)
    elif data.startswith(b"%PDF-"):
        yield _PDF_STREAM.sub(b"stream endstream", data)
        for stream in _PDF_STREAM.findall(data):
            with contextlib.suppress(zlib.error):
                yield zlib.decompressobj().decompress(stream)
    else:
        # Random base64 text would match short names by chance; decode it instead.
        for blob in _DATA_URI.findall(data):
            with contextlib.suppress(binascii.Error, ValueError):
                yield from _parts("", base64.b64decode(blob))
        yield _DATA_URI.sub(b"data:,", data)


@dataclass(frozen=True)
class Scan:
    """Identifiers found (path, what, the identifier) and the files read."""

    hits: list[tuple[str, str, str]]
    files: list[str]


def scan_for_identifiers(root: Path, identifiers: Identifiers, skip: Sequence[str] = ()) -> Scan:
    """Search every file under ``root`` (not following links; top-level names in ``skip``
    left out) for the planted identifiers."""
    hits, files = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for filename in filenames:
            path = here / filename
            if path.is_symlink():
                continue
            relative = str(path.relative_to(root))
            files.append(relative)
            for part in readable_parts(path):
                lowered = part.lower()
                for needle, what in identifiers.text.items():
                    if needle in lowered:
                        hits.append((relative, what, needle.decode(errors="replace")))
                numbers = set(_NUMBER.findall(part))
                numbers |= {b"".join(m) for m in _ISO_DATE.findall(part)}
                for needle in numbers & set(identifiers.numbers):
                    hits.append((relative, identifiers.numbers[needle], needle.decode()))
    return Scan(hits=hits, files=files)


def scan_run(workdir: Path, identifiers: Identifiers) -> Scan:
    """Scan what a run wrote: the workdir without the workflow's own files (the copied
    Snakefile, rules, config, and the linked model)."""
    skip = {name.split("/")[0] for name in WORKFLOW_FILES} | {"resources"}
    return scan_for_identifiers(workdir, identifiers, skip=sorted(skip))


# ---------------------------------------------------------------- the shared runs


@pytest.fixture(scope="module")
def clean_cohort(tmp_path_factory) -> Path:
    return synthesise(tmp_path_factory.mktemp("clean_cohort"), PARTICIPANTS, SEED)


@pytest.fixture(scope="module")
def bad_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad_cohort")
    return synthesise(out, PARTICIPANTS, SEED, bad_inputs=BAD_FRACTION)


@pytest.fixture(scope="module")
def clean_run(clean_cohort, tmp_path_factory) -> Path:
    workdir = prepare_workdir(tmp_path_factory.mktemp("clean_run"), clean_cohort, SHARD_SIZE)
    run_workflow(workdir)
    return workdir


@pytest.fixture(scope="module")
def bad_run(bad_cohort, tmp_path_factory) -> Path:
    workdir = prepare_workdir(tmp_path_factory.mktemp("bad_run"), bad_cohort, SHARD_SIZE)
    run_workflow(workdir)
    return workdir


@pytest.fixture(scope="module")
def killed_run(clean_cohort, tmp_path_factory) -> tuple[Path, list[Kill]]:
    workdir = prepare_workdir(tmp_path_factory.mktemp("killed_run"), clean_cohort, SHARD_SIZE)
    kills, _ = run_with_kills(workdir, pytest_kill_points())
    return workdir, kills


# ---------------------------------------------------------------- (a) bad inputs


def test_every_bad_input_case_has_an_expected_outcome():
    assert set(EXPECTED_OUTCOMES) == set(corrupt.CASES)
    for case, (_, outcome) in corrupt.DICOM_CASES.items():
        assert (EXPECTED_OUTCOMES[case] is None) == (outcome == corrupt.INCLUDED), case


def test_the_bad_cohort_is_damaged_as_asked(bad_cohort):
    cases = read_tsv(bad_cohort / "bad_inputs.tsv")
    assert len(cases) == round(BAD_FRACTION * PARTICIPANTS) >= 1
    assert set(cases["case"]) <= set(corrupt.CASES)


def test_every_participant_of_the_sheet_is_accounted_for(bad_cohort, bad_run, clean_run):
    assert lost_participants(bad_cohort, bad_run) == []
    assert lost_participants(bad_cohort, clean_run) == []


def test_each_bad_participant_gets_the_outcome_its_case_implies(bad_cohort, bad_run, clean_run):
    cases = read_tsv(bad_cohort / "bad_inputs.tsv")
    assert wrong_outcomes(cases, outcomes(bad_run), outcomes(clean_run)) == []


def test_the_other_participants_match_the_clean_run(bad_cohort, bad_run, clean_run):
    cases = read_tsv(bad_cohort / "bad_inputs.tsv").set_index("participant_id")["case"]
    bad, clean = outcomes(bad_run), outcomes(clean_run)
    compared = [pid for pid in sorted(bad) if has_clean_outputs(cases.get(pid))]
    assert len(compared) >= PARTICIPANTS - len(cases)
    assert differences(bad_run, clean_run, compared) == []
    good = [pid for pid in compared if pid not in cases]
    assert {p: bad[p] for p in good} == {p: clean[p] for p in good}
    assert any(label_map(clean_run, pid) is not None for pid in good)  # masks were compared


def test_no_log_holds_a_traceback(bad_run, clean_run):
    assert (bad_run / "logs" / "shards").is_dir()
    assert tracebacks(bad_run) == []
    assert tracebacks(clean_run) == []


@pytest.mark.parametrize("extra_row", [0, 1, 2])
def test_unsafe_ids_are_refused_at_start_up_naming_the_row(
    extra_row, bad_cohort, bad_run, tmp_path
):
    """Each row ``participants_unsafe.tsv`` adds (an id escaping its folder, an id with a
    space, a repeated id) appended alone to the sheet stops the workflow before any job."""
    sheet = read_tsv(bad_cohort / "participants.tsv")
    unsafe = pd.read_csv(bad_cohort / "participants_unsafe.tsv", sep="\t", dtype=str)
    assert len(unsafe) == len(sheet) + 3
    row = unsafe.iloc[len(sheet) + extra_row]
    path = tmp_path / "participants.tsv"
    pd.concat([sheet, row.to_frame().T]).to_csv(path, sep="\t", index=False)
    code, output = run_snakemake(bad_run, "-n", "--config", f"participants={path}")
    assert code != 0
    line = len(sheet) + 2  # the header is line 1
    assert f"data row {line - 1} (line {line}): participant_id {row['participant_id']!r}" in output
    assert "Traceback" not in output


# ---------------------------------------------------------------- (b) identifiers


def test_the_scanner_finds_identifiers_in_every_kind_of_output(bad_cohort, tmp_path):
    from matplotlib.figure import Figure
    from PIL import Image, PngImagePlugin

    identifiers = planted_identifiers([bad_cohort])
    table = read_tsv(bad_cohort / "identifiers.tsv").astype(str).iloc[0]
    name, patient, born = table["patient_name"], table["patient_id"], table["birth_date"]
    surname = name.split("^")[0]
    (tmp_path / "run.log").write_text(f"reading {name.upper()}\n")
    (tmp_path / "record.json").write_text(json.dumps({"who": surname}))
    (tmp_path / "table.tsv").write_text(f"id\tborn\nx\t{born}\n")
    (tmp_path / "digits.tsv").write_text(f"id\tvalue\nx\t0.{born}7\n")  # no whole number
    save_nifti(tmp_path / "image.nii.gz", np.zeros((2, 2, 2), np.int16), np.eye(4), descrip=patient)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", table["institution"], zip=True)
    Image.new("L", (4, 4)).save(tmp_path / "figure.png", pnginfo=info)
    Figure().savefig(tmp_path / "figure.pdf", metadata={"Author": name})
    with gzip.open(tmp_path / "notes.txt.gz", "wt") as out:
        out.write(f"born {born[:4]}-{born[4:6]}-{born[6:]}")
    (tmp_path / "clean.txt").write_text("nothing to see\n")
    scan = scan_for_identifiers(tmp_path, identifiers)
    assert len(scan.files) == 9
    assert {path for path, _, _ in scan.hits} == {
        "run.log",
        "record.json",
        "table.tsv",
        "image.nii.gz",
        "figure.png",
        "figure.pdf",
        "notes.txt.gz",
    }


def test_no_identifier_in_any_file_the_runs_wrote(
    clean_cohort, bad_cohort, clean_run, bad_run, killed_run
):
    identifiers = planted_identifiers([clean_cohort, bad_cohort])
    assert len(identifiers.text) >= 3 * PARTICIPANTS and identifiers.numbers
    scanned = set()
    for workdir in (clean_run, bad_run, killed_run[0]):
        scan = scan_run(workdir, identifiers)
        assert scan.hits == [], workdir
        scanned.update(scan.files)
    # Figures (PDF) are drawn only when QC leaves participants: not asked for here.
    for kind in (".nii.gz", ".png", ".json", ".tsv", ".html", ".log", "metadata.db"):
        assert any(name.endswith(kind) for name in scanned), kind


# ---------------------------------------------------------------- (c) determinism, (d) SIGKILL


def test_every_kill_point_was_reached(killed_run):
    _, kills = killed_run
    assert [k.killed for k in kills] == [True] * len(kills), kills


def test_two_clean_runs_give_identical_tables_and_masks(clean_run, killed_run, clean_cohort):
    first, second = cohort_tables(clean_run), cohort_tables(killed_run[0])
    assert {"participants.tsv", "exclusions.tsv", "tables/flow.tsv"} <= set(first)
    assert list(first) == list(second)
    assert [name for name in first if first[name] != second[name]] == []
    participants = read_tsv(clean_cohort / "participants.tsv")["participant_id"].tolist()
    assert differences(clean_run, killed_run[0], participants) == []


def test_no_output_is_truncated_after_kills(killed_run):
    workdir, _ = killed_run
    assert unreadable_outputs(workdir) == {}


def test_no_temporary_file_survives_a_kill(killed_run):
    workdir, kills = killed_run
    if not any(k.temporaries for k in kills):
        pytest.skip("no kill landed during a write")
    assert temporaries(workdir) == []
