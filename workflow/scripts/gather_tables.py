"""Snakemake adapter: stack the tables in ``input.tables`` into ``output[0]``.

A script rather than a command because a cohort has thousands of shard tables, more
paths than one shell command line may hold.
"""

import sys

from myoflow.gather import concat_tables
from myoflow.io import write_tsv

snakemake = globals()["snakemake"]  # injected by Snakemake's script: directive

# Left open on purpose: a traceback must still reach the log as the process exits.
sys.stdout = sys.stderr = open(snakemake.log[0], "w")
table = concat_tables(list(snakemake.input.tables))
write_tsv(snakemake.output[0], table)
print(f"{len(table)} rows from {len(snakemake.input.tables)} tables -> {snakemake.output[0]}")
