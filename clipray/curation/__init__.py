"""The `clipray data curate` driver (Ray, MLflow, the scoring model) above the row stages of
clipray.data.curate (see docs/curation.md)."""
