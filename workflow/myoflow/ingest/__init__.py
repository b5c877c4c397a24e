"""Ingestion (rules/ingest.smk): a participant's DICOM delivery to four stitched Dixon
channels.

:mod:`~myoflow.ingest.inventory` lists what each delivery holds; :mod:`~myoflow.ingest.convert`
reads its series (:mod:`~myoflow.ingest.sources`, :mod:`~myoflow.ingest.dicom`), decides which
channel and station each is (:mod:`~myoflow.ingest.series`), stitches the stations
(:mod:`~myoflow.ingest.stitch`) and records the acquisition
(:mod:`~myoflow.ingest.acquisition`).
"""
