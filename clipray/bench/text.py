"""`clipray bench text`: tokenizer captions/s per core beside open_clip's SimpleTokenizer, measured
in the same process on the same captions, and CLIPPO renders/s per core.

The process pins itself to one CPU core (and one Rayon thread) and divides by its CPU time, so
every rate is per core-second even when other work shares the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

from clipray.bench import Benchmark, bench_registry


def _pin_one_core() -> str:
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned"


def _rate(fn: Callable[[Sequence[str]], Any], texts: Sequence[str], batch: int, repeats: int) -> float:
    """Best-of-`repeats` items per CPU-second of `fn` over `texts` in batches.

    CPU time of this single-threaded, one-core process is core time: on a shared machine it leaves
    out the time spent waiting for the core, which wall-clock rates would count.
    """
    best = 0.0
    for _ in range(repeats):
        start = time.process_time()
        for i in range(0, len(texts), batch):
            fn(texts[i : i + batch])
        best = max(best, len(texts) / max(time.process_time() - start, 1e-9))
    return best


def _repair_seconds(tokenizer: Callable[[Sequence[str]], Any], texts: Sequence[str],
                    batch: int, repeats: int) -> tuple[float, int]:
    """CPU-s of a pass of `tokenizer` spent inside ftfy's mojibake repair (`fix_encoding`, and
    `fix_text` for texts too long for clipray's shortcuts), the least of `repeats` passes as the
    rates are their best, and the number of such calls in a pass: the lines where
    `clipray.text.clean` cannot show that the repair leaves them alone."""
    import dataclasses

    from clipray.text import clean

    original = clean.ftfy_tables
    tables = original()
    spent, calls = 0.0, 0

    def timed(fix: Callable[..., str]) -> Callable[..., str]:
        def call(*args: Any) -> str:
            nonlocal spent, calls
            start = time.process_time()
            try:
                return fix(*args)
            finally:
                spent += time.process_time() - start
                calls += 1
        return call

    metered = dataclasses.replace(tables, fix_text=timed(tables.fix_text), fix_encoding=timed(tables.fix_encoding))
    # clean.py looks `ftfy_tables` up at each call: swapping the module attribute meters these passes only.
    clean.ftfy_tables = lambda: metered  # type: ignore[assignment]
    least = float("inf")
    try:
        for _ in range(max(repeats, 1)):
            spent, calls = 0.0, 0
            for i in range(0, len(texts), batch):
                tokenizer(texts[i : i + batch])
            least = min(least, spent)
    finally:
        clean.ftfy_tables = original
    return least, calls


def package_sentences(path: str = "/var/lib/dpkg/status") -> list[str]:
    """Caption-like English with a real long-tail vocabulary: the package descriptions of a Debian
    system, split into sentences (empty where there is no dpkg database)."""
    import re

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    texts: list[str] = []
    body: list[str] | None = None
    for line in [*lines, ""]:
        if body is not None and line.startswith(" "):
            body.append(line.strip() if line.strip() != "." else "")
            continue
        if body:
            paragraph = " ".join(body)
            texts.extend(t for t in re.split(r"(?<=[.!?])\s+", paragraph) if len(t) > 15)
        body = None
        if line.startswith("Description: "):
            texts.append(line.removeprefix("Description: "))
            body = []
    return list(dict.fromkeys(texts))


def corpora(n: int, seed: int) -> dict[str, list[str]]:
    """Three corpora of at most `n` captions: adversarial varied text, English, a 90/10 mix of both.

    English is the package descriptions, else synthetic English captions (whose small vocabulary
    flatters the reference tokenizer's word cache)."""
    from clipray.text.captions import varied_captions

    varied = varied_captions(n, seed=seed)
    english = package_sentences()
    label = f"English ({len(english)} package descriptions)"
    if len(english) < 500:
        english = [c for c in varied_captions(4 * n, seed=seed + 1) if c.isascii() and len(c) < 400]
        label = "synthetic English captions"
    english = english[:n]  # distinct texts, so that the reference's first pass is really cold
    mix = [varied[i] if i % 10 == 0 else english[i] for i in range(len(english))]
    return {"varied (multi-script, emoji, HTML)": varied, label: english, "web-like mix (90/10)": mix}


def run(args: argparse.Namespace) -> int:
    pinned = _pin_one_core()
    from clipray.text import load_tokenizer
    from clipray.text.reference import reference_tokenizer

    ours = load_tokenizer("openai", context_length=77)
    ours(["warm up: ÿ ünïcödé 猫"])  # builds the lazily computed Unicode table once
    print(f"clipray bench text: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"{pinned}; {args.captions} captions per corpus, batches of {args.batch}, best of {args.repeats}; "
          "rates per CPU-second of this one-core process")
    print(f"{'corpus':38s} {'SimpleTokenizer cold':>21s} {'SimpleTokenizer warm':>21s} {'clipray openai':>15s} "
          f"{'speed-up (warm)':>16s} {'ftfy-bound':>11s}")
    for name, texts in corpora(args.captions, args.seed).items():
        reference = reference_tokenizer(77)
        cold = _rate(reference, texts, args.batch, 1)
        warm = _rate(reference, texts, args.batch, args.repeats)
        fast = _rate(ours, texts, args.batch, args.repeats)
        in_ftfy, calls = _repair_seconds(ours, texts, args.batch, args.repeats)
        bound = f"{len(texts) / warm / in_ftfy:10.1f}x" if in_ftfy > 0 else f"{'none':>11s}"
        print(f"{name:38s} {cold:17,.0f} /s {warm:17,.0f} /s {fast:11,.0f} /s {fast / warm:15.1f}x {bound}"
              f"  ({calls:,} calls of ftfy's mojibake repair, {in_ftfy:.3f} CPU-s)")
    print("ftfy-bound: the speed-up clipray would reach if everything but ftfy's mojibake repair (fix_encoding, "
          "on the lines where the ids depend on it) were free")

    if args.render_size:
        from clipray.text.render import UnifontRenderer

        renderer = UnifontRenderer(args.font, image_size=args.render_size)
        name, texts = list(corpora(min(args.captions, 8192), args.seed).items())[1]
        renderer(texts[:64])
        rate = _rate(renderer, texts, args.batch, args.repeats)
        print(f"render {args.render_size}x{args.render_size} RGB uint8, {len(texts)} captions ({name}):")
        print(f"  clipray UnifontRenderer (NumPy glyph table):        {rate:9,.0f} images/s per core")
        if os.path.exists(args.baseline_font):
            baseline = pil_renderer(args.baseline_font, args.render_size)
            base = _rate(baseline, texts, args.batch, args.repeats)
            print(f"  baseline PIL FreeType unifont.otf 16 px + textwrap: {base:9,.0f} images/s per core "
                  f"({rate / base:.1f}x)")
    return 0


def pil_renderer(font_path: str, size: int) -> Callable[[Sequence[str]], Any]:
    """The obvious renderer: PIL FreeType with Unifont's .otf, word-wrapped with textwrap."""
    import textwrap

    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, 16)
    width = max(size // 8, 1)

    def render(texts: Sequence[str]) -> np.ndarray:
        out = np.empty((len(texts), size, size, 3), dtype=np.uint8)
        for i, text in enumerate(texts):
            image = Image.new("RGB", (size, size), (127, 127, 127))
            draw = ImageDraw.Draw(image)
            for row, line in enumerate(textwrap.wrap(text.lower(), width)[: size // 16]):
                draw.text((0, 16 * row), line, font=font, fill=(0, 0, 0))
            out[i] = np.asarray(image)
        return out

    return render


def add_arguments(p: argparse.ArgumentParser) -> None:
    from clipray.text.render import DEFAULT_FONT

    p.add_argument("--captions", type=int, default=20000, help="captions per corpus")
    p.add_argument("--batch", type=int, default=256, help="captions per call (a Ray Data batch)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the best is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render-size", type=int, default=224, help="canvas size for rendering; 0 skips it")
    p.add_argument("--font", default=DEFAULT_FONT, help="Unifont .hex file")
    p.add_argument("--baseline-font", default="/usr/share/fonts/opentype/unifont/unifont.otf",
                   help="Unifont .otf for the PIL FreeType baseline renderer (skipped if missing)")


bench_registry.register("text")(
    Benchmark(help="tokenizer captions/s per core vs open_clip SimpleTokenizer; CLIPPO renders/s per core",
              add_arguments=add_arguments, run=run)
)
