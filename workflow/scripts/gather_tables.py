"""Snakemake adapter: stack the tables in ``input.tables`` into ``output[0]``.

A script rather than a command because a cohort has thousands of shard tables, more
paths than one shell command line may hold.
"""

import sys

from myoflow.core.io import write_tsv
from myoflow.core.tables import concat_tables

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

# Left open on purpose: a traceback must still reach the log as the process exits.
sys.stdout = sys.stderr = open(snakemake.log[0], "w")
table = concat_tables(list(snakemake.input.tables))
write_tsv(snakemake.output[0], table)
print(f"{len(table)} rows from {len(snakemake.input.tables)} tables -> {snakemake.output[0]}")
