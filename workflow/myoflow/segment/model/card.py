"""A trained model on disk: weights plus the model card that vouches for them.

A model folder holds two files:

- ``model.pt``: the network's ``state_dict`` (``torch.save``), loaded only with
  ``weights_only=True`` so a weights file can never run code;
- ``model_card.json``: the model config (:mod:`myoflow.segment.model.registry`, crop included),
  the sha256 of ``model.pt`` and what training measured (data hash, seed, software
  versions, held-out Dice and volume agreement).

:func:`load_model` refuses weights whose sha256 is not the card's: a model swapped or
damaged after training must not silently produce a cohort's masks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from myoflow.core.errors import MyoflowError
from myoflow.core.io import write_bytes, write_json
from myoflow.segment.model.registry import build_model, check_config

WEIGHTS_FILE = "model.pt"
CARD_FILE = "model_card.json"


class ModelIntegrityError(MyoflowError):
    """A model folder is incomplete, its card unreadable, or its weights not the card's."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(
    model_dir: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    card: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.pt`` and ``model_card.json`` (both atomically); return the card.

    ``card`` holds what training measured; ``config`` and ``weights_sha256`` are added
    here so they always describe the weights actually written.
    """
    check_config(config)
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buffer)
    data = buffer.getvalue()
    folder = Path(model_dir)
    write_bytes(folder / WEIGHTS_FILE, data)
    written = dict(card or {}) | {
        "config": dict(config),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "weights_bytes": len(data),
    }
    write_json(folder / CARD_FILE, written)
    return written


def read_card(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of ``model_dir``.

    Raises:
        ModelIntegrityError: the card is missing, not JSON, or lacks config or checksum.
    """
    path = Path(model_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelIntegrityError(f"no model card at {path}") from None
    except (OSError, ValueError) as err:
        raise ModelIntegrityError(f"model card {path} cannot be read: {err}") from err
    if not isinstance(card, dict) or "config" not in card or "weights_sha256" not in card:
        raise ModelIntegrityError(f"model card {path} lacks 'config' or 'weights_sha256'")
    return card


def verify_weights(model_dir: str | os.PathLike[str], card: Mapping[str, Any]) -> Path:
    """Return the weights path if its sha256 equals the card's.

    Raises:
        ModelIntegrityError: the weights are missing or their checksum differs.
    """
    path = Path(model_dir) / str(card.get("weights_file", WEIGHTS_FILE))
    if not path.is_file():
        raise ModelIntegrityError(f"model weights {path} are missing")
    actual = sha256_file(path)
    if actual != card["weights_sha256"]:
        raise ModelIntegrityError(
            f"model weights {path} have sha256 {actual}, but the model card says "
            f"{card['weights_sha256']}: refusing weights that are not the card's"
        )
    return path


def load_model(
    model_dir: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The verified network of ``model_dir`` in eval mode on ``device``, and its card.

    Raises:
        ModelIntegrityError: see :func:`read_card` and :func:`verify_weights`, or the
            weights do not fit the architecture the card describes.
    """
    card = read_card(model_dir)
    path = verify_weights(model_dir, card)
    model = build_model(card["config"])
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, OSError, TypeError) as err:
        raise ModelIntegrityError(f"model weights {path} do not load: {err}") from err
    return model.to(device).eval(), card
