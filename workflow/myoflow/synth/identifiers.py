"""Fake but realistic personal identifiers for the DICOM headers of synthetic participants.

Planted on purpose: the conversion must strip them, and the reliability bench searches
every output for them (:mod:`myoflow.synth.corrupt`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from myoflow.synth.dicom_writer import PatientInfo
from myoflow.synth.rng import participant_rng

_SURNAMES = (
    "Hartley",
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Castellano",
    "Brennan",
    "Nakamura",
    "Petrov",
    "Achterberg",
    "Quinlan",
)
_GIVEN = (
    "Imogen",
    "Tobias",
    "Saoirse",
    "Mateo",
    "Ingrid",
    "Rafael",
    "Anouk",
    "Casimir",
    "Fenella",
    "Oskar",
)
_INSTITUTIONS = (
    "Stockport Imaging Centre",
    "Reading Imaging Centre",
    "Newcastle Imaging Centre",
    "Bristol Imaging Centre",
)


def planted_identifiers(seed: int, index: int, participant: pd.Series) -> PatientInfo:
    """Fake but realistic identifiers for the DICOM headers of one participant."""
    rng = participant_rng(seed, index, "identifiers")
    study_day = np.datetime64("2014-04-01") + int(rng.integers(0, 2200))
    birth_day = study_day - int(round(float(participant["age"]) * 365.25))
    given = _GIVEN[int(rng.integers(len(_GIVEN)))]
    return PatientInfo(
        patient_name=f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}^{given}",
        patient_id=f"HOSP-{int(rng.integers(10**7, 10**8))}",
        birth_date=str(birth_day).replace("-", ""),
        sex=str(participant["sex"]),
        age_years=int(participant["age"]),
        weight_kg=float(participant["weight_kg"]),
        height_m=float(participant["height_cm"]) / 100,
        institution=_INSTITUTIONS[int(rng.integers(len(_INSTITUTIONS)))],
        study_date=str(study_day).replace("-", ""),
        study_time="".join(f"{int(v):02d}" for v in (rng.integers(8, 19), *rng.integers(0, 60, 2))),
    )
