"""Synthetic DIXON cohorts: phenotypes, anatomy, signal and DICOM with exact ground truth."""
