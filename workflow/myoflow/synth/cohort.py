"""Write a synthetic cohort as a biobank would deliver it, with its exact ground truth.

Layout of ``OUT``:

- ``participants.tsv``: the participant sheet the workflow reads (id, DICOM path, release).
- ``phenotypes.tsv``: sex, age, height, weight, BMI, handedness, ethnicity, release.
- ``truth.tsv``: measured truth per participant (volumes, CSA, fat fractions, hips,
  artefacts); ``targets.tsv``: what the anatomy was built to match.
- ``identifiers.tsv``: the planted fake identifiers written into the DICOM headers
  (the "linkage key" a leak test searches every output for).
- ``manifest.json``: parameters, geometry, labels and the planted population effects.
- ``dicom/{participant}/S{series:03d}/IM_{slice:04d}.dcm`` (or ``dicom/{participant}.zip``).
- ``truth/{participant}/labels.nii.gz``: ground-truth labels on the stitched grid.
- ``manual_masks.tsv``: participant_id and labels (``truth/{participant}/labels.nii.gz``),
  the sheet of manual annotations the workflow can score its masks against.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from myoflow import __version__
from myoflow.core.io import save_nifti, write_json, write_tsv
from myoflow.core.labels import LABELS
from myoflow.synth import atlas, corrupt, phenotypes, psoas_profile
from myoflow.synth.appearance_render import (
    acquisition_protocol,
    appearance_truth,
    cohort_appearance,
    header_overrides,
    noise_sigma,
    noiseless_channels,
    pixel_encoding,
    station_images,
)
from myoflow.synth.delivery import publish, write_stations
from myoflow.synth.geometry import protocol
from myoflow.synth.identifiers import planted_identifiers
from myoflow.synth.planted import planted_effects
from myoflow.synth.render import render_participant
from myoflow.synth.rng import participant_rng
from myoflow.synth.signal import (
    CHANNELS,
    ArtefactRates,
    bias_field,
    sample_artefacts,
    station_channels,
)


@dataclass(frozen=True)
class CohortSpec:
    """Everything that determines a cohort's content (same spec -> same bytes)."""

    out: Path
    participants: int
    protocol: str
    seed: int
    size: str = "full"
    truth_only: bool = False
    zip: bool = False
    rates: ArtefactRates = ArtefactRates()
    release_size: int | None = None
    first_index: int = 1
    preview: bool = False
    workers: int = 1
    noiseless: bool = False  # also write truth/{participant}/water_noiseless.nii.gz
    bad_inputs: float = 0.0  # fraction of participants given one case of corrupt.CASES
    appearance: str = "standard"  # or "randomised" (myoflow.synth.appearance)
    # Seed of the randomised appearances; None: the cohort seed. Another value renders the
    # same participants (bodies, phenotypes, artefacts) as another set of scanners would.
    appearance_seed: int | None = None

    @property
    def look_seed(self) -> int:
        """The seed the participants' appearances are drawn from."""
        return self.seed if self.appearance_seed is None else self.appearance_seed


def planned_hips(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Hip joint centres (LPS mm) each participant's anatomy is built on, vectorised.

    The same mapping as :func:`myoflow.synth.render.body_frame`: the atlas body's hips
    scaled about their midpoint by the body length (height) scale.
    """
    summary = atlas.atlas_summary()[table["atlas_body"].to_numpy()]
    left, right = summary[:, 0:3], summary[:, 3:6]
    centre = (left + right) / 2
    height_est = (summary[:, 6] - centre[:, 2]) / atlas.SHOULDER_HIP_PER_HEIGHT / 10
    height = table["height_cm"].to_numpy()
    scale = np.clip(height / height_est, *atlas.SCALE_LIMITS_Z)[:, None]
    out = {}
    for side, hip in (("left", left), ("right", right)):
        moved = centre + (hip - centre) * scale
        for axis, name in enumerate("xyz"):
            out[f"hip_{side}_{name}_mm"] = moved[:, axis]
    return out


def planned_truth(table: pd.DataFrame, artefact_records: list[dict]) -> pd.DataFrame:
    """Truth without images (``--truth-only``): the targets the anatomy would be built to.

    Rendered anatomy matches these within 2 % (tested), so statistics and scale tests can
    use 100,000 participants without rendering any.
    """
    truth = table[
        ["participant_id", *[c for c in table.columns if c.startswith(("vol_", "psoas_", "ff_"))]]
    ].copy()
    hips = planned_hips(table)
    k = table["height_cm"].to_numpy() / 170.0
    above_hip = (
        psoas_profile.T_MAX * psoas_profile.PSOAS_LENGTH_MM_AT_170CM
        - psoas_profile.INSERTION_BELOW_HIP_MM_AT_170CM
    ) * k
    for side in ("left", "right"):
        truth[f"psoas_max_csa_z_{side}_mm"] = hips[f"hip_{side}_z_mm"] + above_hip
        truth[f"psoas_max_csa_z_{side}_above_hip_mm"] = above_hip
    for name, values in hips.items():
        truth[name] = values
    return _finish_truth(truth, table, artefact_records)


def _finish_truth(
    truth: pd.DataFrame, table: pd.DataFrame, artefact_records: list[dict]
) -> pd.DataFrame:
    """Add derived totals and artefact columns in a fixed column order."""
    with_height = truth.merge(
        table[["participant_id", "height_cm"]], on="participant_id", how="left"
    )
    derived = phenotypes.add_derived(with_height).drop(columns="height_cm")
    artefacts = pd.DataFrame(artefact_records)
    artefacts.insert(0, "participant_id", table["participant_id"].to_numpy())
    merged = derived.merge(artefacts, on="participant_id", how="left")
    return merged[truth_columns(merged.columns)]


def truth_columns(available: Iterable[str]) -> list[str]:
    """The truth table's column order."""
    order = ["participant_id"]
    order += [f"vol_{name}_ml" for name in LABELS]
    order += list(phenotypes.DERIVED_COLUMNS)
    for side in ("left", "right"):
        order += [
            f"psoas_max_csa_{side}_cm2",
            f"psoas_max_csa_z_{side}_mm",
            f"psoas_max_csa_z_{side}_above_hip_mm",
        ]
    order += [c for c in phenotypes.TARGET_COLUMNS if c.startswith("ff_")]
    order += [f"hip_{side}_{axis}_mm" for side in ("left", "right") for axis in "xyz"]
    order += [
        "artefacts",
        "artefact_swap_station",
        "artefact_partial_swap_station",
        "artefact_partial_swap_fraction",
    ]
    order += ["artefact_missing_station", "artefact_missing_channel"]
    available = list(available)
    drawn = [c for c in available if c.startswith(("appearance", "shape_"))]
    return [c for c in order if c in available] + drawn


def _participant_job(args: tuple[CohortSpec, dict, int, dict, str]) -> dict:
    return generate_participant(*args)


def bad_input_cases(spec: CohortSpec) -> dict[int, str]:
    """Which participants (by index) get which bad-input case, deterministically.

    Cases go round :data:`corrupt.CASES` in order over a seeded shuffle of participants,
    so a fraction covering at least ``len(CASES)`` participants includes every case.
    """
    count = int(round(spec.bad_inputs * spec.participants))
    if count == 0:
        return {}
    order = participant_rng(spec.seed, 0, "bad-inputs").permutation(spec.participants)
    cases = corrupt.CASES if not spec.truth_only else corrupt.PHENOTYPE_CASES
    chosen = sorted(int(i) + spec.first_index for i in order[:count])
    return {index: cases[n % len(cases)] for n, index in enumerate(chosen)}


def generate_participant(
    spec: CohortSpec, row: dict, index: int, artefact_fields: dict, case: str = ""
) -> dict:
    """Render one participant, write its DICOM and labels; return its measured truth.

    ``case`` names a bad-input case to apply to the written DICOM (see :mod:`corrupt`);
    what was done is returned under ``bad_input_detail``.
    """
    from myoflow.synth.signal import Artefacts

    proto = protocol(spec.protocol, spec.size)
    artefacts = Artefacts(**artefact_fields)
    appearance = cohort_appearance(spec.appearance, spec.look_seed, index, row, len(proto.stations))
    if appearance is not None:
        proto = acquisition_protocol(spec.protocol, spec.size, appearance)
    grid = proto.grid
    texture_rng = participant_rng(spec.seed, index, "texture")
    phantom = render_participant(row, grid, texture_rng, appearance)
    pid = row["participant_id"]
    patient = planted_identifiers(spec.seed, index, pd.Series(row))
    noise_rng = participant_rng(spec.look_seed, index, "noise")
    dicom_root = spec.out / "dicom"
    dicom_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{pid}.", dir=dicom_root))
    bias_rng = participant_rng(spec.look_seed, index, "bias")
    extra: dict[str, object] = {}
    if appearance is None:
        # One coil sensitivity over the whole body: what every station sees where it overlaps.
        bias = bias_field(grid.shape, bias_rng)
        water, fat = phantom.water * bias, phantom.fat * bias

        def images(station):
            return station_channels(water, fat, station, artefacts, noise_rng)

        writing: dict = {}
    else:
        clean, gain = noiseless_channels(phantom, appearance, grid, bias_rng)
        water = clean["water"]
        sigma = noise_sigma(appearance, row, gain)
        field_rng = participant_rng(spec.look_seed, index, "station-fields")

        def images(station):
            return station_images(
                clean, station, appearance, artefacts, sigma, field_rng, noise_rng
            )

        writing = {
            "encoding": pixel_encoding(appearance),
            "overrides": lambda channel: header_overrides(appearance, channel),
        }
        extra = appearance_truth(appearance, row, gain, grid)
    swapped = 0.0
    detail = ""
    damage_rng = participant_rng(spec.seed, index, "damage")
    try:
        swapped = write_stations(
            proto, images, artefacts, staging, spec.protocol, f"{spec.seed}:{pid}", patient,
            **writing,
        )  # fmt: skip
        if case in corrupt.DICOM_CASES:
            detail = corrupt.DICOM_CASES[case][0](staging, damage_rng)
        publish(staging, dicom_root, pid, spec.zip or case == corrupt.ZIP_CASE)
        if case == corrupt.ZIP_CASE:
            detail = corrupt.corrupt_zip(dicom_root / f"{pid}.zip", damage_rng)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    save_nifti(
        spec.out / "truth" / pid / "labels.nii.gz",
        phantom.labels,
        grid.affine_ras(),
        descrip="myoflow synthetic truth labels",
    )
    if spec.noiseless:
        save_nifti(
            spec.out / "truth" / pid / "water_noiseless.nii.gz",
            water.astype(np.float32),
            grid.affine_ras(),
            descrip="myoflow synthetic noiseless water",
        )
    truth = {"participant_id": pid, **phantom.truth}
    for muscle in (
        "psoas_major",
        "iliacus",
        "gluteus_maximus",
        "gluteus_medius",
        "gluteus_minimus",
        "muscle",
    ):
        truth[f"ff_{muscle}"] = float(row[f"ff_{muscle}"])
    truth["artefact_partial_swap_fraction"] = swapped
    truth.update(extra)
    truth["bad_input_detail"] = detail
    if spec.preview and index == spec.first_index:
        from myoflow.synth.preview import render_preview

        title = (
            f"{pid}: {row['sex']}, {row['age']:.0f} y, {row['height_cm']:.0f} cm,"
            f" BMI {row['bmi']:.1f} (truth outlined)"
        )
        render_preview(
            spec.out / "preview.png",
            phantom.water,
            phantom.fat,
            phantom.labels,
            grid,
            title,
            phantom.frame.hip_left,
        )
    return truth


def generate_cohort(spec: CohortSpec) -> pd.DataFrame:
    """Generate the cohort described by ``spec``; return its truth table."""
    if spec.truth_only and spec.appearance != "standard":
        raise ValueError(
            "--truth-only predicts the standard anatomy; a randomised appearance changes the "
            "shapes it renders, so it needs images (drop --truth-only)"
        )
    table = phenotypes.sample_cohort(
        spec.seed,
        spec.participants,
        spec.protocol,
        release_size=spec.release_size,
        first_index=spec.first_index,
    )
    indices = range(spec.first_index, spec.first_index + spec.participants)
    n_stations = len(protocol(spec.protocol, spec.size).stations)
    artefacts = [
        sample_artefacts(participant_rng(spec.seed, i, "artefacts"), n_stations, spec.rates)
        for i in indices
    ]
    spec.out.mkdir(parents=True, exist_ok=True)
    cases = bad_input_cases(spec)
    details: dict[str, str] = {}
    if spec.truth_only:
        truth = planned_truth(table, [a.record() for a in artefacts])
    else:
        rows = table.to_dict("records")
        jobs = [
            (spec, row, i, asdict(a), cases.get(i, ""))
            for row, i, a in zip(rows, indices, artefacts, strict=True)
        ]
        if spec.workers > 1:
            with ProcessPoolExecutor(spec.workers) as pool:
                measured = list(pool.map(_participant_job, jobs))
        else:
            measured = [_participant_job(job) for job in jobs]
        records = [a.record() for a in artefacts]
        measured_table = pd.DataFrame(measured)
        details = dict(
            zip(
                measured_table["participant_id"],
                measured_table.pop("bad_input_detail"),
                strict=True,
            )
        )
        truth = _finish_truth(measured_table, table, records)
        ids = [
            planted_identifiers(spec.seed, i, pd.Series(row))
            for row, i in zip(rows, indices, strict=True)
        ]
        identifiers = pd.DataFrame([asdict(p) for p in ids])
        identifiers.insert(0, "participant_id", table["participant_id"].to_numpy())
        write_tsv(spec.out / "identifiers.tsv", identifiers)
        zipped = {i for i, c in cases.items() if c == corrupt.ZIP_CASE}
        sheet = pd.DataFrame(
            {
                "participant_id": table["participant_id"],
                "dicom": [
                    f"dicom/{p}.zip" if spec.zip or i in zipped else f"dicom/{p}"
                    for p, i in zip(table["participant_id"], indices, strict=True)
                ],
                "release": table["release"],
            }
        )
        write_tsv(spec.out / "participants.tsv", sheet)
        # The truth label maps stand in for manual annotations (config
        # stats.manual_annotations.masks): the workflow scores its masks against them.
        masks = [f"truth/{p}/labels.nii.gz" for p in table["participant_id"]]
        write_tsv(
            spec.out / "manual_masks.tsv",
            pd.DataFrame({"participant_id": table["participant_id"], "labels": masks}),
        )
        if cases:
            write_tsv(spec.out / "participants_unsafe.tsv", corrupt.unsafe_sheet(sheet))
    delivered = table[list(phenotypes.PHENOTYPE_COLUMNS)].copy()
    if cases:
        bad = _bad_input_table(spec, table, cases, delivered, details)
        write_tsv(spec.out / "bad_inputs.tsv", bad)
    write_tsv(spec.out / "phenotypes.tsv", delivered)
    write_tsv(
        spec.out / "targets.tsv", table[["participant_id", *[c for c in phenotypes.TARGET_COLUMNS]]]
    )
    write_tsv(spec.out / "truth.tsv", _rounded(truth))
    write_json(spec.out / "manifest.json", manifest(spec))
    return truth


def _bad_input_table(
    spec: CohortSpec,
    table: pd.DataFrame,
    cases: dict[int, str],
    delivered: pd.DataFrame,
    details: dict[str, str],
) -> pd.DataFrame:
    """Damage ``delivered`` phenotypes in place and list every bad input with its outcome."""
    rows = []
    for index, case in cases.items():
        pid = table["participant_id"].iloc[index - spec.first_index]
        if case in corrupt.PHENOTYPE_CASES:
            rng = participant_rng(spec.seed, index, "damage")
            detail = corrupt.damage_phenotypes(delivered, case, pid, rng)
            expected = corrupt.EXCLUDED
        else:
            detail = details[pid]
            expected = corrupt.DICOM_CASES.get(case, (None, corrupt.EXCLUDED))[1]
        rows.append({"participant_id": pid, "case": case, "expected": expected, "detail": detail})
    return pd.DataFrame(rows, columns=["participant_id", "case", "expected", "detail"])


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    """Round floats to 6 significant decimals so TSV bytes do not depend on float noise."""
    out = table.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].round(6)
    return out


def manifest(spec: CohortSpec) -> dict:
    """What was generated, how, and what population effects were planted."""
    proto = protocol(spec.protocol, spec.size)
    out = {
        "generator": "myoflow synth",
        "version": __version__,
        "protocol": spec.protocol,
        "size": spec.size,
        "seed": spec.seed,
        "participants": spec.participants,
        "first_index": spec.first_index,
        "release_size": spec.release_size,
        "truth_only": spec.truth_only,
        "zip": spec.zip,
        "noiseless": spec.noiseless,
        "bad_inputs": spec.bad_inputs,
        "artefact_rates": asdict(spec.rates),
        "grid": {
            "shape": proto.grid.shape,
            "spacing_mm": proto.grid.spacing_mm,
            "origin_lps_mm": proto.grid.origin_lps_mm,
            "orientation": "LPS (i->L, j->P, k->S)",
        },
        "stations": [asdict(s) for s in proto.stations],
        "channels": list(CHANNELS),
        "labels": LABELS,
        "derived_labels": {
            "iliopsoas_left": ["psoas_major_left", "iliacus_left"],
            "iliopsoas_right": ["psoas_major_right", "iliacus_right"],
        },
        "planted_effects": planted_effects(spec.protocol),
    }
    if spec.appearance != "standard":
        # Grids and stations differ per participant: truth.tsv's appearance_* columns.
        out["appearance"] = {
            "mode": spec.appearance,
            "seed": spec.look_seed,
            "note": "each participant's slice spacing, sequence, tissue signals, fields, "
            "noise, encoding and shape variation are in truth.tsv (appearance_*, shape_*); "
            "grid and stations above are the protocol's before reslicing; docs/appearance.md",
        }
    return out
