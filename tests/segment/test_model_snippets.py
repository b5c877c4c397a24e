"""config/models/*.yaml: the ready-made nnunetv2 settings of published models validate
against the config schema once merged over config.yaml, and map only known structures."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from myoflow.core.labels import ALL_LABELS

ROOT = Path(__file__).parents[2]
SCHEMA = yaml.safe_load((ROOT / "config" / "schemas" / "config.schema.yaml").read_text())
SNIPPETS = sorted((ROOT / "config" / "models").glob("*.yaml"))


def merged(snippet: dict) -> dict:
    """config.yaml with the snippet's sections merged in, as `--configfile` merges them."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for section, values in snippet.items():
        config[section] = config.get(section, {}) | values
    return config


def test_there_is_a_snippet_per_published_nnunet_model():
    names = [p.stem for p in SNIPPETS]
    assert names == ["mrsegmentator", "totalsegmentator_total_mr", "totalvibesegmentator"]


@pytest.mark.parametrize("path", SNIPPETS, ids=lambda p: p.stem)
def test_snippet_validates_and_maps_only_known_structures(path):
    snippet = yaml.safe_load(path.read_text())
    assert set(snippet) == {"model"}
    model = snippet["model"]
    assert model["backend"] == "nnunetv2"
    jsonschema.validate(merged(snippet), SCHEMA)
    assert set(model["labels"].values()) <= set(ALL_LABELS)
    assert all(isinstance(value, int) and value > 0 for value in model["labels"])
    # Each side of every structure it names: a mapping that drops one side is a typo.
    for name in model["labels"].values():
        other = (
            name.replace("_left", "_right")
            if name.endswith("_left")
            else name.replace("_right", "_left")
        )
        assert other in model["labels"].values(), f"{path.name}: {name} without {other}"
    assert "source" not in model  # the source is cited in comments, not config keys
    assert "map_to_binary.py" in path.read_text() or "README.md" in path.read_text()


def test_schema_names_exactly_our_structures():
    labels = SCHEMA["properties"]["model"]["properties"]["labels"]
    assert labels["additionalProperties"]["enum"] == list(ALL_LABELS)


@pytest.mark.parametrize(
    "bad",
    [
        {"labels": {1: "psoas_minor_left"}},
        {"labels": {}},
        {"channels": ["t1"]},
        {"region": "thighs"},
        {"folds": []},
        {"hips_margin_mm": {"lateral": 100}},
    ],
)
def test_schema_refuses_a_bad_nnunet_model_section(bad):
    good = {"backend": "nnunetv2", "dir": "m", "labels": {1: "iliopsoas_left"}}
    jsonschema.validate(merged({"model": good}), SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(merged({"model": good | bad}), SCHEMA)
