"""CLIP's caption cleaning (`clean_text`) with the exact output of open_clip's `SimpleTokenizer`,
which runs `ftfy.fix_text`, `html.unescape` twice, a whitespace collapse and lower-casing.

`ftfy.fix_text` costs several times the BPE itself, though most lines need none of its mojibake
repair, its one expensive step, and many need nothing at all. `fix_text` cuts a text into lines
and runs `ftfy.fix_and_explain` on each: a loop, until the line stops changing, over
`unescape_html`, `fix_encoding` (the repair), a pass of character fixers (`_PASS_FIXERS`: curly
quotes, fullwidth forms, ligatures, line breaks, control characters...) and NFC. clipray runs the
same loop over the same steps (`_fix_segment`), each done by ftfy's own function or skipped where
ftfy's code (6.3, cited) shows it returns its input:

- `fix_encoding` returns ASCII text and text that `ftfy.badness.is_bad` does not flag as it is;
  `is_bad` is one search of ftfy's pattern, and text without any of the characters that every
  match of that pattern holds (read off the pattern itself) needs no search.
- The pass fixers act character by character (two sequences aside), so a pass is computed from
  tables of what each fixer does to each character, made by calling the fixers.

Nothing here copies ftfy's logic: the tables come from calling ftfy's functions, and badness, HTML
unescaping, the repair and the fixes are ftfy's own. The lines that need the repair bound the
speed-up on mojibake-heavy text: the reference pays the same repair for them.
"""

from __future__ import annotations

import functools
import html
import importlib
import json
import re
import unicodedata
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftfy import TextFixerConfig

# The character fixers of one pass of `ftfy.fix_and_explain` (its list after `fix_encoding`),
# by their names in `ftfy.FIXERS` and `ftfy.TextFixerConfig`. All of them act character by character
# (`str.translate` or a one-character regex), except `fix_line_breaks` ("\r\n" -> "\n") and
# `remove_terminal_escapes` (ESC [ ... letter), whose trigger characters "\r" and ESC are themselves
# changed when alone (by `fix_line_breaks` and `remove_control_chars`), so they are never inert.
_PASS_FIXERS = (
    "fix_c1_controls", "fix_latin_ligatures", "fix_character_width", "uncurl_quotes",
    "fix_line_breaks", "fix_surrogates", "remove_terminal_escapes", "remove_control_chars",
)
_MAX_CODE_POINT = 0x110000
# The ftfy release whose fix_text / fix_and_explain the shortcuts were proven against, and its
# configuration fields: another release (new fixers, another loop) gets plain ftfy.fix_text.
_PROVEN_FTFY = ("6", "3")
_PROVEN_FIELDS = frozenset({
    "unescape_html", "remove_terminal_escapes", "fix_encoding", "restore_byte_a0", "replace_lossy_sequences",
    "decode_inconsistent_utf8", "fix_c1_controls", "fix_latin_ligatures", "fix_character_width", "uncurl_quotes",
    "fix_line_breaks", "fix_surrogates", "remove_control_chars", "normalization", "max_decode_length", "explain",
})
# The tables of `changed_code_points` and `_simple_characters`, computed once for the ftfy release
# and Unicode database named inside: computing them costs about 0.4 CPU-s, paid by every process
# that cleans text (each preprocessing actor of each Ray Data execution). Elsewhere they are
# computed. tests/unit/test_clean_text.py checks the file against a fresh computation.
TABLES_FILE = Path(__file__).with_name("ftfy_tables.json")


@dataclass(frozen=True)
class _Ftfy:
    """ftfy's functions and the character tables derived from them, built once per process."""

    shortcuts: bool  # False: an ftfy release the shortcuts were not proven for
    fix_text: Callable[..., str]
    fix_encoding: Callable[[str], str]  # the mojibake repair, the one expensive step
    is_bad: Callable[[str], bool]
    unescape_html: Callable[[str], str]
    full: TextFixerConfig  # fix_text's default (explain=False, as fix_text sets it)
    pass_fixers: tuple[Callable[[str], str], ...]  # ftfy.FIXERS of `_PASS_FIXERS`, in order
    one_pass: dict[str, str]  # what a pass makes of each simple character (see `_one_pass_table`)
    max_segment: int
    not_inert: re.Pattern[str]  # characters that some pass fixer changes
    not_simple: re.Pattern[str]  # ... and that are not "simple" (see `_simple_characters`)
    maybe_bad: re.Pattern[str]  # text without a match is not `is_bad` (see `required_characters`)


def changed_code_points(fixers: list[Callable[[str], str]]) -> list[int]:
    """Code points that at least one of `fixers` changes when given that character alone.

    Bisection over blocks of code points: a block the fixers all return unchanged holds none (they
    act per character, see `_PASS_FIXERS`), which takes a fraction of one call per code point.
    """
    out: list[int] = []

    def visit(lo: int, hi: int) -> None:
        block = "".join(map(chr, range(lo, hi)))
        if all(f(block) == block for f in fixers):
            return
        if hi - lo <= 64:  # small enough to try each character
            out.extend(cp for cp in range(lo, hi) if any(f(chr(cp)) != chr(cp) for f in fixers))
            return
        mid = (lo + hi) // 2
        visit(lo, mid)
        visit(mid, hi)

    for start in range(0, _MAX_CODE_POINT, 4096):
        visit(start, min(start + 4096, _MAX_CODE_POINT))
    return out


def _simple_characters(changed: set[int], fixers: list[Callable[[str], str]]) -> set[int]:
    """Changed characters whose every fixer output is made only of unchanged (inert) characters.

    Whatever fixer of a pass acts first on such a character, its output is inert, so the later
    fixers of that pass leave it alone: a pass over text whose changed characters are all simple
    is a map of characters (`_one_pass_table`), and its output holds no changed character (nor does
    NFC of it: tests/unit/test_clean_text.py), so the next iteration's pass has nothing to do.
    Surrogates are left out: `fix_surrogates` joins pairs into other characters.
    """
    simple = set()
    for cp in changed:
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if all(f(ch) == ch or not any(ord(c) in changed for c in f(ch)) for f in fixers):
            simple.add(cp)
    return simple


def _char_class(code_points: set[int]) -> re.Pattern[str]:
    """A compiled `[...]` of the given code points, written as ranges."""
    parts = [re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
             for lo, hi in _ranges(code_points)]
    return re.compile("[" + "".join(parts) + "]" if parts else "(?!)")  # (?!) never matches


def _ranges(code_points: set[int]) -> list[list[int]]:
    """Sorted code points as inclusive [first, last] runs (a compact JSON form)."""
    out: list[list[int]] = []
    for cp in sorted(code_points):
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def required_characters(pattern: re.Pattern[str]) -> set[int] | None:
    """Non-ASCII code points, one of which is in every match of `pattern`, or None if the pattern's
    structure does not show such a set.

    Read off the parsed pattern: a match of a sequence holds a character of each of its mandatory
    items (a literal, a `[...]` of literals and ranges, a group, a repeat of at least one), of an
    alternation one of some branch. Of a sequence's items, the one whose characters are least
    likely in clean text is kept (fewest letters, spaces and quotation marks), so that ordinary
    non-Latin text rarely holds one.

    Used on ftfy's `BADNESS_RE` (`is_bad` is its search), it turns most of `is_bad`'s cost, a ~40-way
    alternation tried at every position, into one character-class scan (25 times cheaper).
    """
    try:
        # The parser behind re.compile (CPython 3.11+); private, so its absence disables the filter.
        sre = importlib.import_module("re._constants")
        tree = importlib.import_module("re._parser").parse(pattern.pattern, pattern.flags)
    except (ImportError, AttributeError, re.error):  # another Python's parser
        return None
    if pattern.flags & re.IGNORECASE:  # literals would also match their other cases
        return None

    # The parse tree is untyped: (opcode, argument) pairs whose argument depends on the opcode.
    def item(op: object, av: Any) -> set[int] | None:
        if op is sre.LITERAL:
            return {av}
        if op is sre.IN:
            chars: set[int] = set()
            for inner, arg in av:
                if inner is sre.LITERAL:
                    chars.add(arg)
                elif inner is sre.RANGE:
                    chars.update(range(arg[0], arg[1] + 1))
                else:  # a category (\s, \w), a negation: no small set
                    return None
            return chars
        return None

    def commonness(chars: set[int]) -> tuple[int, int]:
        categories = [unicodedata.category(chr(cp)) for cp in chars]
        return sum(c[0] in "LZ" or c in _QUOTE_CATEGORIES for c in categories), len(chars)

    def requirement(sequence: Any) -> set[int] | None:
        best: set[int] | None = None
        for op, av in sequence:
            found: set[int] | None
            if op is sre.BRANCH:
                branches = [requirement(b) for b in av[1]]
                known = [b for b in branches if b is not None]
                found = set().union(*known) if len(known) == len(branches) else None
            elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
                found = requirement(av[2]) if av[0] >= 1 else None
            elif op is sre.SUBPATTERN:  # (group, added flags, removed flags, pattern)
                found = None if av[1] & re.IGNORECASE else requirement(av[-1])
            else:
                found = item(op, av)
            if found and all(cp >= 0x80 for cp in found) and (best is None or commonness(found) < commonness(best)):
                best = found
        return best

    return requirement(tree)


_QUOTE_CATEGORIES = ("Pi", "Pf", "Ps", "Pe")  # quotation marks and brackets, frequent in clean text


def _pass_fixers() -> list[Callable[[str], str]]:
    import ftfy

    return [ftfy.FIXERS[name] for name in _PASS_FIXERS]


def _tables_key(ftfy_version: str) -> dict[str, object]:
    """What the fixer tables depend on: ftfy's fixers and the Unicode database of `re` and `str`."""
    return {"ftfy": ftfy_version, "unicode": unicodedata.unidata_version, "fixers": list(_PASS_FIXERS)}


def compute_tables(fixers: list[Callable[[str], str]], ftfy_version: str) -> dict[str, object]:
    """The fixer tables (changed and simple code points, as runs) with the key they hold for."""
    changed = set(changed_code_points(fixers))
    return {"key": _tables_key(ftfy_version), "changed": _ranges(changed),
            "simple": _ranges(_simple_characters(changed, fixers))}


def save_ftfy_tables(path: Path = TABLES_FILE) -> None:
    """Recompute `TABLES_FILE` with the installed ftfy (after a deliberate ftfy upgrade)."""
    import ftfy

    record = compute_tables(_pass_fixers(), ftfy.__version__)
    path.write_text(json.dumps(record, separators=(",", ":")) + "\n")


def _load_tables(fixers: list[Callable[[str], str]], ftfy_version: str) -> tuple[set[int], set[int]]:
    """(changed, simple) code points: from `TABLES_FILE` when it was made for this ftfy release and
    Unicode database, else computed."""
    try:
        record = json.loads(TABLES_FILE.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("key") != _tables_key(ftfy_version):
        record = compute_tables(fixers, ftfy_version)

    def points(name: str) -> set[int]:
        return {cp for lo, hi in record[name] for cp in range(lo, hi + 1)}

    return points("changed"), points("simple")


@functools.cache
def ftfy_tables() -> _Ftfy:
    import ftfy
    from ftfy.badness import BADNESS_RE, is_bad
    from ftfy.fixes import unescape_html

    full = ftfy.TextFixerConfig(explain=False)
    shortcuts = (tuple(ftfy.__version__.split(".")[:2]) == _PROVEN_FTFY and set(full._fields) == _PROVEN_FIELDS
                 and all(name in ftfy.FIXERS for name in _PASS_FIXERS))
    fixers = _pass_fixers() if shortcuts else []
    changed, simple = _load_tables(fixers, ftfy.__version__) if shortcuts else (set(), set())
    # is_bad is BADNESS_RE's search in the proven release; elsewhere every text is "maybe bad".
    required = required_characters(BADNESS_RE) if shortcuts else None
    return _Ftfy(
        shortcuts=shortcuts,
        fix_text=ftfy.fix_text,
        fix_encoding=ftfy.fix_encoding,
        is_bad=is_bad,
        unescape_html=unescape_html,
        full=full,
        pass_fixers=tuple(fixers),
        one_pass=_one_pass_table(simple, fixers),
        max_segment=full.max_decode_length,
        not_inert=_char_class(changed),
        not_simple=_char_class(changed - simple),
        maybe_bad=_char_class(required) if required is not None else re.compile("(?s:.)|^"),
    )


def _encoding_quiet(ft: _Ftfy, text: str) -> bool:
    """`ftfy.fix_encoding` returns `text` unchanged: `_fix_encoding_one_step_and_explain` returns
    ASCII text (`possible_encoding(text, "ascii")`) and text that `is_bad` does not flag as they
    are, and `fix_encoding_and_explain` stops as soon as a step changes nothing. `is_bad` is a
    search of `BADNESS_RE`, which cannot match text without a character of `maybe_bad`."""
    return text.isascii() or ft.maybe_bad.search(text) is None or not ft.is_bad(text)


def _fix_segment(ft: _Ftfy, seg: str, html_on: bool) -> str:
    """`ftfy.fix_text` of one of its segments (`seg` holds no "\\n" but at its end).

    `html_on`: no earlier segment of the text contained "<" (`fix_text` turns `unescape_html` off
    from the first segment with "<" on, and `fix_and_explain` when its own text has one).

    `fix_and_explain` (what `fix_text` calls per segment) loops until its text stops changing over
    four steps, each done here by ftfy's own function or skipped where it provably returns its
    input:
    1. `unescape_html`, which only rewrites `&...;`: skipped without "&".
    2. `fix_encoding` (the mojibake repair; `fix_and_explain` calls it with its defaults): skipped
       where `_encoding_quiet` shows it returns the text as it is.
    3. The pass of `_PASS_FIXERS`: see `_pass`.
    4. NFC.
    """
    html_on = html_on and "<" not in seg
    text = seg
    while True:
        before = text
        if html_on and "&" in text:
            text = ft.unescape_html(text)
        if not _encoding_quiet(ft, text):
            text = ft.fix_encoding(text)
        text = _pass(ft, text)
        if not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def _pass(ft: _Ftfy, text: str) -> str:
    """The pass fixers of one iteration of `fix_and_explain`, in its order (all of them are on in
    fix_text's default configuration): nothing to do for text without a character that one of
    them changes, one scan for text whose changed characters are all simple (`_one_pass_table`),
    else the fixers themselves."""
    if ft.not_inert.search(text) is None:
        return text
    if ft.not_simple.search(text) is None and "\x1b" not in text and ("\r" not in text or "\r" in ft.one_pass):
        if "\r\n" in text:
            text = text.replace("\r\n", "\n")
        # A regex scan that replaces the few changed characters: a third of `str.translate`'s
        # cost, which looks up every character of the text in the table.
        fixed = ft.one_pass.__getitem__
        return ft.not_inert.sub(lambda m: fixed(m.group()), text)
    for fixer in ft.pass_fixers:
        text = fixer(text)
    return text


def _one_pass_table(simple: set[int], fixers: list[Callable[[str], str]]) -> dict[str, str]:
    """For each simple character, the output of the first pass fixer that changes it.

    In a pass over text whose changed characters are all simple, that first fixer is the one that
    acts on the character (the fixers before it leave it alone, and act per character), and its
    output is inert, so the fixers after it leave that alone too: the text is fixed character by
    character, in one scan instead of eight. Two fixers also act on sequences:
    - `remove_terminal_escapes` on ESC [ ... letter: text with ESC takes the fixers (ESC is not in
      the table).
    - `fix_line_breaks` on "\r\n": `_pass` first joins each "\r\n" into "\n". That is exact
      when the first fixer to change "\r" is one that turns "\r\n" into "\n", and the fixers
      before it neither delete a character nor produce "\n", so that the pairs it sees are the
      text's own. Where that does not hold, "\r" is left out of the table as well.
    """
    def first_change(ch: str) -> tuple[int, str]:
        return next((i, out) for i, fixer in enumerate(fixers) if (out := fixer(ch)) != ch)

    table = {ch: first_change(ch) for ch in map(chr, simple) if ch != "\x1b"}
    if "\r" in table:
        at, _ = table["\r"]
        earlier = [out for i, out in table.values() if i < at]
        if fixers[at]("\r\n") != "\n" or any(out == "" or "\n" in out for out in earlier):
            del table["\r"]
    return {ch: out for ch, (_, out) in table.items()}


def _segments(text: str) -> Iterator[str]:
    """The pieces `ftfy.fix_text` cuts `text` into (up to `max_decode_length` characters)."""
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        yield text[pos:end]
        pos = end


def _fixed_segments(text: str) -> Generator[str, None, None]:
    """`ftfy.fix_text(text)` piece by piece.

    ftfy.fix_text cuts the text after each "\\n" (and every `max_decode_length` characters) and
    calls `fix_and_explain` on each piece; "<" in a piece turns `unescape_html` off from there on.
    `_fix_segment` on each piece, told whether `unescape_html` is still on, is the same call.
    """
    ft = ftfy_tables()
    if len(text) > ft.max_segment or not ft.shortcuts:  # ftfy would also cut inside lines
        yield ft.fix_text(text, ft.full)
        return
    html_on = True
    for seg in _segments(text):
        yield _fix_segment(ft, seg, html_on)
        html_on = html_on and "<" not in seg


def fix_text(text: str) -> str:
    """`ftfy.fix_text(text)` with its default configuration."""
    ft = ftfy_tables()
    if "\n" not in text and len(text) <= ft.max_segment and ft.shortcuts:
        return _fix_segment(ft, text, True)
    return "".join(_fixed_segments(text))


def _finish(fixed: str) -> str:
    """The rest of SimpleTokenizer's cleaning after ftfy (html.unescape returns at once without "&")."""
    return " ".join(html.unescape(html.unescape(fixed)).split()).lower()


def clean_text(text: str) -> str:
    """SimpleTokenizer's `clean='lower'`: ftfy, HTML unescape twice, collapse whitespace, lower-case.

    Printable ASCII without "&" skips ftfy entirely: no pass fixer changes it, it is NFC, and
    fix_encoding and unescape_html return it unchanged (see `_fix_segment`).
    """
    if cleans_to_spacing_and_case(text):
        return " ".join(text.split()).lower()
    return _finish(fix_text(text))


def cleans_to_spacing_and_case(text: str) -> bool:
    """Printable ASCII without "&": `clean_text` only collapses its spaces and lower-cases it."""
    return text.isascii() and text.isprintable() and "&" not in text and ftfy_tables().shortcuts


LONG_TEXT = 512  # characters: shorter texts are cleaned whole


def clean_text_until(text: str, enough: Callable[[str], bool]) -> str:
    """`clean_text(text)`, or for a long multi-line text possibly a prefix of it: the cleaning of
    its first lines, as soon as `enough` holds for that (a tokenizer: "these words overflow the
    context already"). The prefix is `clean_text(text)` cut before a space.

    Why the prefix is exact: ftfy fixes each line on its own (`_fixed_segments`), and a fixed line
    that still ends in "\\n" separates it from the rest for html.unescape (its entity pattern stops
    at "\\n"), for the whitespace collapse, and for lower-casing (the final-sigma rule looks only
    across case-ignorable characters, which whitespace is not).
    """
    ft = ftfy_tables()
    if len(text) < LONG_TEXT or "\n" not in text or len(text) > ft.max_segment or not ft.shortcuts:
        return clean_text(text)
    fixed: list[str] = []
    size, check_at = 0, 256
    segments = _fixed_segments(text)
    for piece in segments:
        fixed.append(piece)
        size += len(piece)
        if size >= check_at and piece.endswith("\n"):
            check_at *= 2  # doubling keeps the checks linear in the text's length
            cleaned = _finish("".join(fixed))
            if enough(cleaned):
                segments.close()
                return cleaned
    return _finish("".join(fixed))
