"""Software environments: conda env files and requirements are pinned and referenced."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
CONDA_PIN = re.compile(r"^[A-Za-z0-9_.-]+(\[[A-Za-z0-9_,-]+\])?=[0-9][^=<>*,\s]*$")
PIP_PIN = re.compile(r"^[A-Za-z0-9_.-]+(\[[A-Za-z0-9_,-]+\])?==[0-9][^=<>*,\s]*$")


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r "):
            assert PIP_PIN.match(line), f"{path.name}: {line!r} is not pinned with =="
            name, version = line.split("==")
            pins[name.split("[")[0].lower()] = version
    return pins


def env_dependencies(path: Path) -> tuple[list[str], list[str]]:
    env = yaml.safe_load(path.read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [p for d in env["dependencies"] if isinstance(d, dict) for p in d.get("pip", [])]
    return conda, pip


def test_there_are_env_files():
    assert [p.name for p in ENV_FILES] == ["myoflow.yaml"]


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_every_dependency_is_pinned(env_file):
    conda, pip = env_dependencies(env_file)
    assert conda, f"{env_file.name} has no conda dependencies"
    for dependency in conda:
        assert CONDA_PIN.match(dependency), f"{env_file.name}: {dependency!r} is not pinned"
    for dependency in pip:
        assert PIP_PIN.match(dependency), f"{env_file.name}: {dependency!r} is not pinned"
    assert "python=3.11" in conda


def test_myoflow_env_pins_the_runtime_requirements():
    conda, pip = env_dependencies(ROOT / "envs" / "myoflow.yaml")
    pinned = dict(p.lower().split("==") for p in pip)
    runtime = requirement_pins(ROOT / "requirements.txt")
    # These run the workflow (and, in SLURM jobs, from the same Python as the Snakemake
    # that submitted them); rules do not need them inside their env.
    for runner in ["snakemake", "pygments", "snakemake-executor-plugin-slurm"]:
        runtime.pop(runner)
    assert pinned == runtime


def test_requirements_are_pinned():
    runtime = requirement_pins(ROOT / "requirements.txt")
    dev = requirement_pins(ROOT / "requirements-dev.txt")
    assert runtime["snakemake"] == "9.27.1"
    # `snakemake --report` needs the [reports] extra (pygments), pinned beside it.
    assert "snakemake[reports]==9.27.1" in (ROOT / "requirements.txt").read_text()
    assert "pygments" in runtime
    assert "snakemake-executor-plugin-slurm" in runtime
    assert {"pytest", "ruff", "snakefmt", "dcm2niix"} <= set(dev)
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()


def conda_directives(rule_file: Path) -> list[str]:
    return re.findall(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", rule_file.read_text(), re.MULTILINE)


def test_every_conda_env_named_in_rules_exists():
    named = [(f, env) for f in RULE_FILES for env in conda_directives(f)]
    assert named, "no rule names a conda env"
    for rule_file, env in named:
        assert (rule_file.parent / env).resolve().is_file(), f"{rule_file.name}: {env} missing"


def test_every_rule_that_runs_code_names_a_conda_env():
    for rule_file in RULE_FILES:
        for rule in re.split(r"^rule ", rule_file.read_text(), flags=re.MULTILINE)[1:]:
            runs_code = re.search(r"^\s+(shell|script):", rule, re.MULTILINE)
            if runs_code:
                name = rule.split(":")[0]
                assert "conda:" in rule, f"{rule_file.name}: rule {name} has no conda env"
