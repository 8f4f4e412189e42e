"""Data plane: sources, per-batch ops, the Ray Data pipeline and the synthetic dataset."""
