"""How captions reach the text tower, chosen once from `text_encoding.kind`.

    tokens: caption -> `tokens` int32 (N, context_length), CLIP BPE or another registered tokenizer
    pixels: caption -> `text_image` uint8 (N, S, S, 3), drawn in GNU Unifont (CLIPPO)

Every place that depends on the kind asks the `TextEncoding` instead of testing the kind itself:
the data stage (which op writes which column), the objective (which column the text tower
reads), evaluation (strings -> the same arrays as in training), the pre-Ray vocabulary check and
the run's logged vocabulary file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from clipray.errors import MissingFileError
from clipray.text.tokenizer import Tokenizer

if TYPE_CHECKING:
    from clipray.config import PipelineConfig

Encoder = Callable[[Sequence[str]], np.ndarray]

# kind -> (the data op that writes the column, the column the text tower reads)
_KINDS: dict[str, tuple[str, str]] = {"tokens": ("tokenize", "tokens"), "pixels": ("render_text", "text_image")}
OP_NAMES = tuple(op for op, _ in _KINDS.values())
TEXT_COLUMNS = tuple(column for _, column in _KINDS.values())


@dataclass(frozen=True)
class TextEncoding:
    """One pipeline's text encoding: what it writes, with which op, and what it needs."""

    kind: Literal["tokens", "pixels"]
    tokenizer: str  # text_encoding.tokenizer (kind=tokens)
    font: str  # text_encoding.font (kind=pixels)
    context_length: int  # model.text.context_length
    vocab_size: int  # model.text.vocab_size
    image_size: int  # model.vision.image_size: CLIPPO renders captions at the photos' size

    @property
    def op_name(self) -> str:
        """The registered data op that writes `column`."""
        return _KINDS[self.kind][0]

    @property
    def column(self) -> str:
        """The batch column the data stage writes and the text tower reads."""
        return _KINDS[self.kind][1]

    @property
    def is_image(self) -> bool:
        """The column holds uint8 images, normalised like the photos on the training device."""
        return self.kind == "pixels"

    def encoder(self) -> Encoder:
        """Captions -> the column's array, built once (a tokenizer or a Unifont renderer). A bad
        setting raises naming its key (`text_encoding.tokenizer` / `text_encoding.font`)."""
        if self.kind == "tokens":
            return self.load_tokenizer()
        from clipray.text.render import UnifontRenderer

        try:
            return UnifontRenderer(self.font, image_size=self.image_size)
        except FileNotFoundError as e:
            raise MissingFileError(f"text_encoding.font: {e}") from None

    def load_tokenizer(self) -> Tokenizer:
        """text_encoding.tokenizer at model.text.context_length (kind=tokens: ALBEF's MLM reads
        its special ids)."""
        from clipray.config import ConfigError
        from clipray.text.tokenizer import load_tokenizer

        if self.kind != "tokens":
            raise ConfigError(f"text_encoding.kind={self.kind} has no tokenizer; this model reads token ids "
                              "(set text_encoding.kind=tokens)")
        try:
            return load_tokenizer(self.tokenizer, context_length=self.context_length)
        except (FileNotFoundError, KeyError) as e:  # an unknown name or a missing file: say which key
            raise type(e)(f"text_encoding.tokenizer: {e.args[0] if e.args else e}") from None

    def check_vocabulary(self, encoder: Encoder | None = None, *, remote_ok: bool = False) -> None:
        """For kind=tokens: model.text.vocab_size holds every id of the tokenizer (a
        ConfigError naming both sizes otherwise). `encoder`: one already built by `encoder()`.

        `remote_ok`: a vocabulary this machine cannot read (a URI, or an absolute path that exists
        only on the cluster) is left to the job's own preflight, which runs before training."""
        if self.kind != "tokens":
            return
        spec = self.tokenizer
        if remote_ok and encoder is None and ("://" in spec or (Path(spec).is_absolute() and not Path(spec).exists())):
            return
        from clipray.config import ConfigError
        from clipray.text.tokenizer import check_vocabulary_fits

        tokenizer = encoder if isinstance(encoder, Tokenizer) else self.load_tokenizer()
        try:
            check_vocabulary_fits(tokenizer, self.vocab_size, spec)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def vocabulary_file(self) -> str | None:
        """The local vocabulary file a run logs with its model (a trained BPE), if there is one."""
        return self.tokenizer if self.kind == "tokens" and Path(self.tokenizer).is_file() else None


def text_encoding(config: PipelineConfig) -> TextEncoding:
    """The pipeline's text encoding (`text_encoding` section, sized by `model`)."""
    te, model = config.text_encoding, config.model
    return TextEncoding(kind=te.kind, tokenizer=te.tokenizer, font=te.font, context_length=model.text.context_length,
                        vocab_size=model.text.vocab_size, image_size=model.vision.image_size)
