"""CLIP byte-level BPE tokenizer (filled in by the text stages)."""
