"""The cohort (rules/cohort.smk): gather the shards, run the statistics, draw the figures and
write the report.

:mod:`~myoflow.cohort.gather` builds the analysis and exclusions tables;
:mod:`~myoflow.cohort.analysis` runs :mod:`myoflow.cohort.stats`;
:mod:`~myoflow.cohort.figures` draws its results with :mod:`~myoflow.cohort.plots`;
:mod:`~myoflow.cohort.report` writes ``report.html``; :mod:`~myoflow.cohort.manual` scores
manual annotations.
"""
