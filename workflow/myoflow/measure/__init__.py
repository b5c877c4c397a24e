"""Measurement and QC (rules/measure.smk): metrics, fat-water swap checks, QC flags and an
overlay for every segmented participant.

:mod:`~myoflow.measure.stage` runs a shard; :mod:`~myoflow.measure.metrics` and
:mod:`~myoflow.measure.csa_profile` measure label maps, :mod:`~myoflow.measure.swaps` and
:mod:`~myoflow.measure.qc` decide the flags, :mod:`~myoflow.measure.overlay` draws.
"""
