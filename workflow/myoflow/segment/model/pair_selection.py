"""Which training pairs a refiner or a calibration uses, and the card sections they give.

``myoflow refine`` and ``myoflow calibrate`` read pairs TSVs (:func:`read_pairs`) and may
narrow them to some participant ids, or to the ids that a ``split.json`` of ``myoflow
train`` lists as training or held-out participants (:class:`PairSelection`). The held-out
set they evaluate on goes into the model card's ``data`` section (:func:`held_out_data`);
a cascade may average its first stage over shifted coarse crops (:func:`with_coarse_shifts`).

The error messages name the command-line options, as the commands report them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from myoflow.core.errors import MyoflowError
from myoflow.segment.model.registry import ModelConfigError, check_config
from myoflow.segment.model.samples import (
    TrainingPair,
    hash_inputs,
    read_pairs,
    training_data_sha256,
)


@dataclass(frozen=True)
class PairSelection:
    """Pairs of a pairs TSV: all of them, only some ids, or one part of a ``split.json``.

    Attributes:
        tsv: The pairs TSV; None: no pairs (then ``ids`` and ``split`` must be None too).
        ids: Only the pairs of these participant ids, in this order.
        split: Only the pairs whose ids this ``split.json`` lists under ``part``, in its
            order (used instead of ``ids`` when both are given).
        part: ``"train"`` or ``"held_out"``: the list of ``split`` to take.
    """

    tsv: Path | None = None
    ids: tuple[str, ...] | None = None
    split: Path | None = None
    part: str = "held_out"

    def read(self) -> list[TrainingPair]:
        """The selected pairs.

        Raises:
            MyoflowError: ids or a split without a pairs TSV, an unreadable split, or an id
                that the TSV lacks.
            PairsError: the TSV cannot be read.
        """
        if self.tsv is None:
            if self.ids or self.split:
                raise MyoflowError("--held-out and --split need --held-out-pairs")
            return []
        pairs = read_pairs(self.tsv)
        if self.split is not None:
            return pairs_of_split(pairs, self.split, self.part, self.tsv)
        return pairs if self.ids is None else only_ids(pairs, self.ids, self.tsv)


def pairs_of_split(
    pairs: Sequence[TrainingPair], split: Path, part: str, source: Path
) -> list[TrainingPair]:
    """The pairs whose ids ``split`` (a ``split.json`` of ``myoflow train``) lists under
    ``part`` ("train" or "held_out"), in its order.

    Raises:
        MyoflowError: the split cannot be read, or lists an id that ``source`` lacks.
    """
    try:
        ids = json.loads(split.read_text())[part]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MyoflowError(f"{split}: no {part} ids ({err})") from err
    return only_ids(pairs, ids, source)


def only_ids(pairs: Sequence[TrainingPair], ids: Sequence[str], source: Path) -> list[TrainingPair]:
    """The pairs of ``ids``, in their order.

    Raises:
        MyoflowError: an id that ``source`` (the pairs' TSV) lacks.
    """
    by_id = {p.participant_id: p for p in pairs}
    unknown = sorted(set(ids) - set(by_id))
    if unknown:
        raise MyoflowError(f"ids not in {source}: {unknown}")
    return [by_id[i] for i in ids]


def held_out_data(
    card: Mapping[str, Any], held: Sequence[TrainingPair], channels: Sequence[str]
) -> dict[str, Any]:
    """The card's ``data`` section with a new held-out set's size and data hash."""
    return dict(card.get("data", {})) | {
        "held_out_participants": len(held),
        "held_out_data_sha256": training_data_sha256(
            {p.participant_id: hash_inputs(p, channels) for p in held}
        ),
    }


def with_coarse_shifts(config: Mapping[str, Any], values: Sequence[float]) -> dict[str, Any]:
    """``config`` whose cascade averages its first stage over the shifts in ``values``
    (flat (medial, posterior, superior) mm triples).

    Raises:
        MyoflowError: ``config`` has no refiner, ``values`` are not triples, or the shifts
            are invalid.
    """
    if config.get("refine") is None:
        raise MyoflowError("--coarse-shifts-mm needs a cascade (a model with a refiner)")
    if len(values) % 3:
        raise MyoflowError(f"--coarse-shifts-mm takes mm triples; got {len(values)} numbers")
    shifts = [list(values[n : n + 3]) for n in range(0, len(values), 3)]
    shifted = dict(config) | {"refine": dict(config["refine"]) | {"coarse_shifts_mm": shifts}}
    try:
        check_config(shifted)
    except ModelConfigError as err:
        raise MyoflowError(str(err)) from err
    return shifted
