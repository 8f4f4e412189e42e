"""`clipray tokenizer train`."""

from __future__ import annotations

import argparse

from clipray.commandline import Subparsers, positive
from clipray.errors import InvalidInputError


def register(sub: Subparsers) -> None:
    tok = sub.add_parser("tokenizer", help="tokenizer tools").add_subparsers(dest="tokenizer_command", required=True)
    p = tok.add_parser("train", help="train a BPE vocabulary on a caption corpus (use it as text_encoding.tokenizer: PATH)")
    p.add_argument("--source", required=True, help="parquet file/directory/glob, or a text file with one caption per line")
    p.add_argument("--out", required=True, help="output tokenizer file (.json)")
    p.add_argument("--vocab-size", type=positive, required=True, help="ids in the vocabulary, start/end-of-text included")
    p.add_argument("--column", default="caption", help="caption column of a parquet source")
    p.add_argument("--limit", type=positive, default=None, help="use at most this many captions")
    p.add_argument("--min-frequency", type=positive, default=2, help="merges seen fewer times are not learned")
    p.set_defaults(func=cmd_tokenizer_train)


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from clipray.text.train_bpe import MIN_VOCAB_SIZE, train_and_save

    if args.vocab_size < MIN_VOCAB_SIZE:
        raise InvalidInputError(f"--vocab-size {args.vocab_size} is too small: the 256 byte symbols and the "
                                f"start- and end-of-text tokens need at least {MIN_VOCAB_SIZE}")
    info = train_and_save(args.source, args.out, args.vocab_size, column=args.column, limit=args.limit,
                          min_frequency=args.min_frequency)
    print(f"trained a vocabulary of {info['vocab_size']} ids on {info['captions']} captions: {info['path']} "
          f"(use it with --set text_encoding.tokenizer={info['path']} and model.text.vocab_size >= {info['vocab_size']})")
    return 0
