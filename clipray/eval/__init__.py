"""Evaluation: zero-shot classification (retrieval and modality gap build on the same embeddings)."""
