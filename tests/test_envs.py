"""Software environments: conda env files and requirements are pinned and referenced, and
the dependencies pyproject.toml declares are what the code imports, pinned alike in
requirements*.txt and envs/*.yaml."""

from __future__ import annotations

import ast
import functools
import re
import shutil
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]
ENV_FILES = sorted((ROOT / "envs").glob("*.yaml"))
RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]
CONDA_PIN = re.compile(r"^[A-Za-z0-9_.-]+(\[[A-Za-z0-9_,-]+\])?=[0-9][^=<>*,\s]*$")
PIP_PIN = re.compile(r"^[A-Za-z0-9_.-]+(\[[A-Za-z0-9_,-]+\])?==[0-9][^=<>*,\s]*$")
RUNNERS = {"snakemake", "pygments", "snakemake-executor-plugin-slurm"}
"""Pinned in requirements.txt to run the workflow (Snakemake's process), not imported by
myoflow and so neither in pyproject.toml's dependencies nor in the rules' conda env."""
RUNTIME_CODE = ("workflow/myoflow", "workflow/scripts")
"""Code that runs in the rules' environment: its imports are [project].dependencies."""
DEV_CODE = ("tests", "bench")
"""Code that runs only in development: its imports are dependencies or dev extras."""
DISTRIBUTIONS = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "SimpleITK": "simpleitk",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "dateutil": "python-dateutil",
    "jose": "python-jose",
    "attr": "attrs",
}
"""Distribution of each top-level import whose name differs from it (else the same)."""


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-r "):
            assert PIP_PIN.match(line), f"{path.name}: {line!r} is not pinned with =="
            name, version = line.split("==")
            pins[canonicalize_name(name.split("[")[0])] = version
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
    pinned = {canonicalize_name(n): v for n, v in (p.split("==") for p in pip)}
    runtime = requirement_pins(ROOT / "requirements.txt")
    # These run the workflow (and, in SLURM jobs, from the same Python as the Snakemake
    # that submitted them); rules do not need them inside their env.
    for runner in RUNNERS:
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


# ------------------------------------------------- pyproject.toml against pins and imports


def declared(requirements: list[str]) -> dict[str, Requirement]:
    """Requirement strings by canonical distribution name."""
    return {canonicalize_name(r.name): r for r in map(Requirement, requirements)}


def pin_problems(where: str, pins: dict[str, str], wanted: dict[str, Requirement]) -> list[str]:
    """What differs between ``pins`` (name -> version) and the requirements ``wanted``."""
    problems = [f"{where} does not pin {name}" for name in sorted(wanted.keys() - pins.keys())]
    problems += [f"{where} pins {name}, not declared" for name in sorted(pins.keys() - wanted)]
    for name in sorted(pins.keys() & wanted.keys()):
        if not wanted[name].specifier.contains(pins[name], prereleases=True):
            problems.append(f"{where} pins {name}=={pins[name]}, outside {wanted[name]}")
    return problems


def dependency_problems(root: Path) -> list[str]:
    """Where requirements*.txt and envs/*.yaml disagree with pyproject.toml.

    requirements.txt pins exactly [project].dependencies (and the workflow's ``RUNNERS``),
    each version admitted by pyproject.toml; every env file pins the same packages at the
    same versions; requirements-dev.txt pins exactly the dev extras.
    """
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    runtime = declared(project["dependencies"])
    dev = declared(project["optional-dependencies"]["dev"])
    pins = requirement_pins(root / "requirements.txt")
    problems = pin_problems(
        "requirements.txt", {n: v for n, v in pins.items() if n not in RUNNERS}, runtime
    )
    problems += [f"requirements.txt does not pin {name}" for name in sorted(RUNNERS - pins.keys())]
    same = {name: Requirement(f"{name}=={version}") for name, version in pins.items()}
    for env_file in sorted((root / "envs").glob("*.yaml")):
        _, pip = env_dependencies(env_file)
        env_pins = {canonicalize_name(n.split("[")[0]): v for n, v in (p.split("==") for p in pip)}
        problems += pin_problems(
            f"envs/{env_file.name}", env_pins, {n: same[n] for n in runtime if n in same}
        )
    dev_pins = requirement_pins(root / "requirements-dev.txt")
    problems += pin_problems("requirements-dev.txt", dev_pins, dev)
    return problems


@functools.cache
def top_level_imports(source: str) -> tuple[str, ...]:
    """Top-level names of the absolute imports in ``source`` (cached: copies repeat it)."""
    tops = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            tops += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.append(node.module.split(".")[0])
    return tuple(tops)


def third_party_imports(folder: Path, local: set[str]) -> dict[str, list[str]]:
    """Distribution of every top-level import in ``folder``'s .py files that is neither in
    the standard library nor one of ``local``: name -> ["file: module", ...]."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for top in top_level_imports(path.read_text()):
            if top not in sys.stdlib_module_names and top not in local:
                name = canonicalize_name(DISTRIBUTIONS.get(top, top))
                found.setdefault(name, []).append(f"{path.relative_to(folder)}: {top}")
    return found


def import_problems(root: Path) -> list[str]:
    """Imports pyproject.toml does not declare, and runtime dependencies nothing imports.

    What ``RUNTIME_CODE`` imports must be in [project].dependencies, and everything there
    imported by it; what ``DEV_CODE`` imports must be in the dependencies or dev extras
    (its own modules, imported by name on the test path, aside).
    """
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    runtime = declared(project["dependencies"])
    dev = declared(project["optional-dependencies"]["dev"])
    problems = []
    imported: set[str] = set()
    for folder in RUNTIME_CODE:
        found = third_party_imports(root / folder, {"myoflow"})
        imported |= found.keys()
        for name in sorted(found.keys() - runtime.keys()):
            problems.append(f"{folder} imports {name} ({found[name][0]}), not a dependency")
    for name in sorted(runtime.keys() - imported):
        problems.append(f"dependency {name} is not imported by {' or '.join(RUNTIME_CODE)}")
    # Modules of tests/ and bench/ import one another by name (bench puts tests/ on its path).
    own = {p.stem for folder in DEV_CODE for p in (root / folder).rglob("*.py")}
    own |= {p.name for folder in DEV_CODE for p in (root / folder).rglob("*") if p.is_dir()}
    for folder in DEV_CODE:
        found = third_party_imports(root / folder, {"myoflow", *own})
        for name in sorted(found.keys() - runtime.keys() - dev.keys()):
            problems.append(f"{folder} imports {name} ({found[name][0]}), not declared")
    return problems


def test_pyproject_dependencies_are_pinned_alike_in_requirements_and_envs():
    assert dependency_problems(ROOT) == []


def test_pyproject_dependencies_are_what_the_code_imports():
    assert import_problems(ROOT) == []


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} has no {old!r}"
    path.write_text(text.replace(old, new, 1))


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "pin missing from requirements.txt": (
        lambda r: edit(r / "requirements.txt", "pillow==", "# pillow=="),
        "requirements.txt does not pin pillow",
    ),
    "pin outside pyproject's range": (
        lambda r: edit(r / "requirements.txt", "torch==2.13.0", "torch==2.3.0"),
        "requirements.txt pins torch==2.3.0, outside torch>=2.4",
    ),
    "runtime pin not declared in pyproject": (
        lambda r: edit(r / "requirements.txt", "numpy==", "scikit-image==0.26.0\nnumpy=="),
        "requirements.txt pins scikit-image, not declared",
    ),
    "runner missing from requirements.txt": (
        lambda r: edit(r / "requirements.txt", "pygments==", "# pygments=="),
        "requirements.txt does not pin pygments",
    ),
    "pin missing from an env file": (
        lambda r: edit(r / "envs" / "myoflow.yaml", "- contourpy==", "# - contourpy=="),
        "envs/myoflow.yaml does not pin contourpy",
    ),
    "env version differs from requirements.txt": (
        lambda r: edit(r / "envs" / "myoflow.yaml", "torch==2.13.0", "torch==2.12.0"),
        "envs/myoflow.yaml pins torch==2.12.0, outside torch==2.13.0",
    ),
    "extra package in an env file": (
        lambda r: edit(
            r / "envs" / "myoflow.yaml", "- numpy==", "- jsonschema==4.26.0\n      - numpy=="
        ),
        "envs/myoflow.yaml pins jsonschema, not declared",
    ),
    "dev extra differs from requirements-dev.txt": (
        lambda r: edit(r / "requirements-dev.txt", "pyyaml==6.0.3", "pyyaml==6.0.2"),
        "requirements-dev.txt pins pyyaml==6.0.2, outside pyyaml==6.0.3",
    ),
}
IMPORT_BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "undeclared import in myoflow": (
        lambda r: (r / "workflow/myoflow/extra.py").write_text("from skimage import feature\n"),
        "workflow/myoflow imports scikit-image (extra.py: skimage), not a dependency",
    ),
    "import whose distribution is named otherwise": (
        lambda r: edit(r / "pyproject.toml", '"pillow>=10",', ""),
        "workflow/myoflow imports pillow (",
    ),
    "dependency nothing imports": (
        lambda r: edit(r / "pyproject.toml", '"numpy>=2.0",', '"numpy>=2.0", "SimpleITK>=2.4",'),
        "dependency simpleitk is not imported by workflow/myoflow or workflow/scripts",
    ),
    "import in a rule's script": (
        lambda r: (r / "workflow/scripts/extra.py").write_text("import jsonschema.validators\n"),
        "workflow/scripts imports jsonschema (extra.py: jsonschema), not a dependency",
    ),
    "undeclared import in tests": (
        lambda r: (r / "tests/test_extra.py").write_text("import sklearn\n"),
        "tests imports scikit-learn (test_extra.py: sklearn), not declared",
    ),
    "test-only import removed from dev": (
        lambda r: edit(r / "pyproject.toml", '"simpleitk==2.5.7",', ""),
        "imports simpleitk",
    ),
}


@pytest.fixture
def copy_of_root(tmp_path) -> Path:
    """pyproject.toml, requirements*.txt, envs/ and the Python code, to break."""
    for name in ["pyproject.toml", "requirements.txt", "requirements-dev.txt"]:
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "envs", tmp_path / "envs")

    def python_only(folder: str, names: list[str]) -> list[str]:
        keep = [n for n in names if n.endswith(".py") or (Path(folder, n).is_dir())]
        return [n for n in names if n not in keep or n == "__pycache__"]

    for folder in [*RUNTIME_CODE, *DEV_CODE]:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=python_only)
    assert dependency_problems(tmp_path) == [] and import_problems(tmp_path) == []
    return tmp_path


@pytest.mark.parametrize("breakage", BREAKAGES, ids=str)
def test_dependency_check_reports_each_disagreement(copy_of_root, breakage):
    breaks, expected = BREAKAGES[breakage]
    breaks(copy_of_root)
    assert expected in dependency_problems(copy_of_root)


@pytest.mark.parametrize("breakage", IMPORT_BREAKAGES, ids=str)
def test_import_check_reports_each_undeclared_import(copy_of_root, breakage):
    breaks, expected = IMPORT_BREAKAGES[breakage]
    breaks(copy_of_root)
    problems = import_problems(copy_of_root)
    assert any(expected in problem for problem in problems), problems
