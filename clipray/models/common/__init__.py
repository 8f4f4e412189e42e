"""Building blocks shared by the model families (OpenAI/open_clip parameter names)."""
