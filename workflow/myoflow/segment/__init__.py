"""Segmentation (rules/segment.smk): label maps of the hip muscles from one loaded model.

:mod:`~myoflow.segment.stage` runs a shard through one model; :mod:`~myoflow.segment.crop`
maps the stitched grid to the model's crops around each hip and back;
:mod:`myoflow.segment.model` holds the networks, their training and inference.
"""
