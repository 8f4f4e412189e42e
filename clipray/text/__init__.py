"""Text stages: tokenizers (CLIP) and text rendering (CLIPPO).

`load_tokenizer(spec, context_length)` returns a callable from a list of strings to an int32
array of shape (N, context_length): start-of-text, ids, end-of-text, zero padding. The
end-of-text id is the largest id of every tokenizer, so models may pool at `argmax(ids)`.
"""

from clipray.text.tokenizer import Tokenizer, load_tokenizer, tokenizer_registry

__all__ = ["Tokenizer", "load_tokenizer", "tokenizer_registry"]
