"""Per-participant random streams.

Every random draw for participant ``index`` of a cohort with seed ``seed`` comes from a
generator keyed by (seed, index, stream). A participant's phenotypes and images therefore
do not depend on how many participants the cohort has: a cohort of 60 contains the cohort
of 30 as its first 30 participants, which is what incremental data releases need, and
``--truth-only`` draws exactly the phenotypes and targets that the imaging mode draws.
"""

from __future__ import annotations

import zlib

import numpy as np


def participant_rng(seed: int, index: int, stream: str) -> np.random.Generator:
    """Return the generator for one participant and one named purpose.

    Args:
        seed: cohort seed (``--seed``).
        index: 1-based participant number within the cohort.
        stream: what the draws are for ("phenotypes", "anatomy", "noise", ...); separate
            streams keep adding a draw to one purpose from shifting another.
    """
    key = [int(seed), int(index), zlib.crc32(stream.encode())]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))
