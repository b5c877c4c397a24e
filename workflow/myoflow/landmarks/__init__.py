"""Landmarks (rules/landmarks.smk): the hip joint centres of every converted participant.

:mod:`~myoflow.landmarks.stage` runs a shard; :mod:`~myoflow.landmarks.hip_detection` (with
:mod:`~myoflow.landmarks.marrow_contrast`) finds the femoral heads on arrays;
:mod:`~myoflow.landmarks.record` is ``landmarks.json``.
"""
