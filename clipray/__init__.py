"""clipray: CLIP-family training on Ray Data + Ray Train, recorded in MLflow."""

__version__ = "0.1.0"
