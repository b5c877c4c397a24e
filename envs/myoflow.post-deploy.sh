#!/usr/bin/env bash
# Snakemake runs this inside the new conda environment, from the directory it was
# started in, which must be the myoflow checkout (the usual `snakemake --profile ...`).
set -euo pipefail
if ! grep -qs '^name = "myoflow"' pyproject.toml; then
    echo "myoflow post-deploy: run snakemake from the myoflow checkout" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation --editable .
