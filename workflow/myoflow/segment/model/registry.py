"""Build a segmentation network from a plain config, the one saved beside its weights.

A model config is a JSON-able dict::

    {
        "architecture": "vnet",          # a key of ARCHITECTURES
        "in_channels": 1,                # 1: water (UK Biobank); 4: water, fat, in, opp
        "labels": ["iliopsoas"],         # one sigmoid output channel per label, in order
        "width": 1.0,                    # channel multiplier (1: the published 22.9 M)
        "crop": {...},                   # optional: myoflow.segment.crop.CropSpec.to_dict()
        "thresholds": {"iliopsoas": 0.4},  # optional: per-label decision thresholds
        "refine": {"features": 12, "dilations": [1, 2, 4, 1], "crop": {...},  # optional
                   "coarse_shifts_mm": [[0, 0, 0], [2, 2, 3], ...]},  # optional
    }

``build_model`` reads the architecture keys; ``crop`` belongs to the data side (how the
model's inputs are cut from a participant) and is read by ``crop_spec``. Keeping both in
one file beside the weights means a trained model always says how to feed it. So do
``thresholds``, which say how to read its output (:mod:`myoflow.segment.model.calibrate` sets
them; a label without one is cut at 0.5). A config with ``refine`` describes a cascade
(:mod:`myoflow.segment.model.refine`): the network above on its crop, then a full-resolution
refiner on the ``refine`` crop; one weights file holds both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from myoflow.core.errors import MyoflowError
from myoflow.segment.crop import CropSpec
from myoflow.segment.model.refine import Cascade, build_refiner, refine_spec
from myoflow.segment.model.vnet import VNet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"vnet": VNet}
"""Every network a config may name; add new ones here, explicitly."""

CONFIG_KEYS = {"architecture", "in_channels", "labels", "width", "crop", "thresholds", "refine"}
OPTIONAL_KEYS = {"crop", "thresholds", "refine"}
REFINE_KEYS = {"features", "dilations", "crop", "coarse_shifts_mm"}
MAX_COARSE_SHIFT_MM = 50.0
"""A larger shift of the coarse crop would no longer be a re-sampling of the same view."""


class ModelConfigError(MyoflowError, ValueError):
    """A model config is incomplete, misspelt or names an unknown architecture."""


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The untrained network ``config`` describes (load weights into it afterwards).

    Raises:
        ModelConfigError: a key is missing or unknown, a value is invalid, or the
            architecture is not in :data:`ARCHITECTURES`.
    """
    check_config(config)
    architecture = ARCHITECTURES[config["architecture"]]
    network = architecture(
        in_channels=int(config["in_channels"]),
        out_channels=len(config["labels"]),
        width=float(config["width"]),
    )
    if config.get("refine") is None:
        return network
    return Cascade(network, build_refiner(config))


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ModelConfigError` unless ``config`` is a valid model config."""
    missing = sorted(CONFIG_KEYS - OPTIONAL_KEYS - set(config))
    unknown = sorted(set(config) - CONFIG_KEYS)
    if missing or unknown:
        raise ModelConfigError(f"model config: missing keys {missing}, unknown keys {unknown}")
    if config["architecture"] not in ARCHITECTURES:
        raise ModelConfigError(
            f"model config: unknown architecture {config['architecture']!r}; "
            f"expected one of {sorted(ARCHITECTURES)}"
        )
    labels = config["labels"]
    if (
        isinstance(labels, str)
        or not labels
        or not all(isinstance(label, str) and label for label in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ModelConfigError(f"model config: labels must be distinct names, got {labels!r}")
    in_channels, width = config["in_channels"], config["width"]
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ModelConfigError(
            f"model config: in_channels must be a positive int, got {in_channels!r}"
        )
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ModelConfigError(f"model config: width must be a positive number, got {width!r}")
    _check_thresholds(config.get("thresholds"), labels)
    _check_refine(config.get("refine"))


def _check_refine(refine: Any) -> None:
    if refine is None:
        return
    if not isinstance(refine, Mapping) or set(refine) - REFINE_KEYS:
        raise ModelConfigError(
            f"model config: refine must be a mapping with keys among {sorted(REFINE_KEYS)}, "
            f"got {refine!r}"
        )
    features, dilations = refine.get("features", 1), refine.get("dilations", [1])
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ModelConfigError(f"model config: refine features must be >= 1, got {features!r}")
    if (
        isinstance(dilations, str | Mapping)
        or not dilations
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in dilations)
    ):
        raise ModelConfigError(
            f"model config: refine dilations must be a list of ints >= 1, got {dilations!r}"
        )
    if refine.get("crop") is not None:
        try:
            CropSpec.from_dict(refine["crop"])
        except (TypeError, ValueError) as err:
            raise ModelConfigError(f"model config: refine crop: {err}") from err
    shifts = refine.get("coarse_shifts_mm")
    if shifts is not None and not (
        isinstance(shifts, list)
        and shifts
        and all(
            isinstance(shift, list)
            and len(shift) == 3
            and all(_is_number(v) and abs(v) <= MAX_COARSE_SHIFT_MM for v in shift)
            for shift in shifts
        )
    ):
        raise ModelConfigError(
            "model config: refine coarse_shifts_mm must be a non-empty list of [medial, "
            f"posterior, superior] mm, each within +-{MAX_COARSE_SHIFT_MM}, got {shifts!r}"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_thresholds(thresholds: Any, labels: list[str]) -> None:
    if thresholds is None:
        return
    if not isinstance(thresholds, Mapping):
        raise ModelConfigError(
            f"model config: thresholds must map labels to numbers, got {thresholds!r}"
        )
    unknown = sorted(set(thresholds) - set(labels))
    bad = {
        name: value
        for name, value in thresholds.items()
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1
    }
    if unknown or bad:
        raise ModelConfigError(
            f"model config: thresholds must be numbers in (0, 1) for the model's labels; "
            f"unknown labels {unknown}, bad values {bad}"
        )


def crop_spec(config: Mapping[str, Any]) -> CropSpec:
    """The crop geometry a model was trained on (the default when the config has none)."""
    spec = config.get("crop")
    return CropSpec() if spec is None else CropSpec.from_dict(spec)


def model_channels(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The stitched channels a model reads: its crop's, then its refiner's not among them."""
    fine = refine_spec(config)
    names = [*crop_spec(config).channels, *(fine.channels if fine is not None else ())]
    return tuple(dict.fromkeys(names))


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
