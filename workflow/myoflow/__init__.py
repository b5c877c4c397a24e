"""myoflow: DIXON MRI muscle biomarkers at biobank scale."""

__version__ = "0.1.0"
