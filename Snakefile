# myoflow: DIXON MRI (UK Biobank, NAKO) to muscle biomarkers.
#
# This file is the table of contents. The participant sheet is loaded and validated in
# rules/common.smk; each stage has its own rules/<stage>.smk; the logic lives in the
# myoflow package (workflow/myoflow/). Run with: snakemake --profile config/profiles/local


from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/ingest.smk"
include: "rules/landmarks.smk"
include: "rules/segment.smk"
include: "rules/measure.smk"
include: "rules/cohort.smk"
include: "rules/train.smk"


rule all:
    """Build every final output of the configured cohort."""
    default_target: True
    input:
        final_outputs(),
    localrule: True
