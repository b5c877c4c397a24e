"""Build a segmentation network from a plain config, the one saved beside its weights.

A model config is a JSON-able dict::

    {
        "architecture": "vnet",          # a key of ARCHITECTURES
        "in_channels": 1,                # 1: water (UK Biobank); 4: water, fat, in, opp
        "labels": ["iliopsoas"],         # one sigmoid output channel per label, in order
        "width": 1.0,                    # channel multiplier (1: the published 22.9 M)
        "crop": {...},                   # optional: myoflow.crop.CropSpec.to_dict()
    }

``build_model`` reads the architecture keys; ``crop`` belongs to the data side (how the
model's inputs are cut from a participant) and is read by ``crop_spec``. Keeping both in
one file beside the weights means a trained model always says how to feed it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from myoflow.crop import CropSpec
from myoflow.errors import MyoflowError
from myoflow.model.vnet import VNet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"vnet": VNet}
"""Every network a config may name; add new ones here, explicitly."""

CONFIG_KEYS = {"architecture", "in_channels", "labels", "width", "crop"}


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
    return architecture(
        in_channels=int(config["in_channels"]),
        out_channels=len(config["labels"]),
        width=float(config["width"]),
    )


def check_config(config: Mapping[str, Any]) -> None:
    """Raise :class:`ModelConfigError` unless ``config`` is a valid model config."""
    missing = sorted(CONFIG_KEYS - {"crop"} - set(config))
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


def crop_spec(config: Mapping[str, Any]) -> CropSpec:
    """The crop geometry a model was trained on (the default when the config has none)."""
    spec = config.get("crop")
    return CropSpec() if spec is None else CropSpec.from_dict(spec)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
