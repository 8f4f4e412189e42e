"""Dataset curation: metadata, language and model-score filters, near-duplicate removal and
evaluation-set decontamination, run by `clipray data curate` (see docs/curation.md)."""
