"""Training: one loop for every model family, behind a small TrainContext seam."""
