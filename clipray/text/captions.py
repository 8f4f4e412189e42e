"""Deterministic, varied synthetic captions for tokenizer parity tests and text benchmarks.

Covers what web alt-text throws at a tokenizer: plain English, many scripts, emoji (ZWJ
sequences, flags, skin tones), HTML entities (also double-escaped), mojibake, curly quotes in
contractions, URLs, odd whitespace and control characters, case edge cases, random BMP code
points, very long and empty strings.
"""

from __future__ import annotations

import random

_WORDS = ["a", "photo", "of", "the", "cat", "dog", "red", "blue", "car", "street", "old", "man", "woman", "child", "beach", "sunset", "city", "night", "house", "tree", "with", "on", "in", "at", "by", "for", "and", "two", "three", "small", "large", "vintage", "black", "white", "portrait", "view", "close", "up", "kitchen", "table", "coffee", "cup", "wooden", "chair", "mountain", "river", "lake", "boat", "bike", "train", "plane", "sky", "clouds", "snow", "flower", "garden", "food", "pizza", "salad", "bowl", "shirt", "dress", "shoes", "logo", "sign", "text", "illustration", "vector", "icon", "isn't", "don't", "it's", "they're", "we've", "i'm", "you'll", "he'd", "4k", "hd", "2019", "1080p", "100%", "#1", "best", "new", "free", "sale"]

_SCRIPTS = {
    "cyrillic": "Фотография кошки на диване Москва зимой Ёлка ЖЖ щука",
    "greek": "Φωτογραφία μιας γάτας ΣΟΦΙΑ Οδυσσέας ΆΈΉ ς σ Σ",
    "arabic": "صورة قطة على الأريكة مرحبا بالعالم القاهرة ٢٠٢٤",
    "hebrew": "תמונה של חתול על הספה שלום עולם",
    "devanagari": "बिल्ली की तस्वीर नमस्ते दुनिया हिन्दी क्षत्रिय १२३",
    "thai": "ภาพแมวบนโซฟา สวัสดีชาวโลก",
    "chinese": "一只猫在沙发上的照片 北京的夜景 你好世界 龍",
    "japanese": "ソファの上の猫の写真 こんにちは世界 東京タワー ｶﾀｶﾅ",
    "korean": "소파 위의 고양이 사진 안녕하세요 세계",
    "latin_ext": "Ça fait déjà été ÉCOLE Größe straße İstanbul ıi Øresund ĳ ﬁne ﬂow Œuvre",
    "vietnamese": "Ảnh con mèo trên ghế sofa Hà Nội phở",
    "combining": "e\u0301cole n\u0303 a\u0308 Zalgo Z\u0351\u0352\u0353o",
    "math": "∑ x² ≤ ∞ √2 ½ ⅓ ℃ № ™ © ® ° ± × ÷ µ Å",
    "fullwidth": "ＡＢＣ１２３ ｈｅｌｌｏ ！？",
}

_EMOJI = (
    "😀", "🐱", "🐶", "❤️", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸", "1️⃣", "✨", "🔥", "🍕", "☕", "🎉",
    "👩🏻‍💻", "🤷‍♀️", "🧑‍🚀", "©️", "🫠",
)

_ENTITIES = (
    "&amp;", "&lt;b&gt;", "&quot;", "&#39;", "&#x27;", "&eacute;", "&nbsp;", "&amp;amp;", "&amp;quot;",
    "&hellip;", "&mdash;", "&copy;", "&#8217;", "&#128512;", "&unknown;", "& ", "AT&T", "&amp;#39;",
)

_QUOTES = ("you’d", "it’s", "don’t", "“quoted”", "‘single’", "they’re", "I’ll", "we’ve", "‚low‘", "«guillemets»")

_URLS = (
    "https://example.com/path?q=1&x=2", "http://www.Example.ORG/Foo_Bar-baz.jpg", "www.shop.co.uk/item#12",
    "user@mail.example.com", "ftp://files.example.net/a%20b.zip", "#hashtag", "@handle", "C:\\Users\\x.png",
)

_SPACES = (" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u200b", "\u3000", " \u200d ")


def _mojibake(text: str, rng: random.Random) -> str:
    raw = text.encode("utf-8")
    codec = rng.choice(["cp1252", "latin-1", "cp1252"])
    return raw.decode(codec, errors="replace" if codec == "cp1252" else "strict")


def _random_bmp(rng: random.Random, n: int) -> str:
    chars: list[str] = []
    while len(chars) < n:
        cp = rng.randrange(0x20, 0x10000)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        chars.append(chr(cp))
    return "".join(chars)


def _english(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    if rng.random() < 0.15:
        words = [w.upper() for w in words]
    text = " ".join(words)
    return text + rng.choice(["", ".", "!", "?", "...", " :)", ","])


def _mixed(rng: random.Random) -> str:
    parts = [_english(rng, rng.randint(1, 6))]
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        if kind == 0:
            script = rng.choice(list(_SCRIPTS.values())).split(" ")
            start = rng.randrange(len(script))
            parts.append(" ".join(script[start : start + rng.randint(1, 4)]))
        elif kind == 1:
            parts.append("".join(rng.choice(_EMOJI) for _ in range(rng.randint(1, 3))))
        elif kind == 2:
            parts.append(rng.choice(_ENTITIES))
        elif kind == 3:
            parts.append(rng.choice(_QUOTES))
        elif kind == 4:
            parts.append(rng.choice(_URLS))
        elif kind == 5:
            parts.append(_mojibake(rng.choice([*_SCRIPTS.values(), *_QUOTES, "café déjà vu", "naïve — résumé"]), rng))
        elif kind == 6:
            parts.append(_random_bmp(rng, rng.randint(1, 8)))
        else:
            parts.append(str(rng.randint(0, 10**rng.randint(1, 9))))
    rng.shuffle(parts)
    return "".join(p + rng.choice(_SPACES) for p in parts)


def varied_captions(n: int, seed: int = 0) -> list[str]:
    """`n` captions, the same for the same seed: mostly mixed web-like text plus edge cases."""
    rng = random.Random(seed)
    edge = [
        "", " ", "\n\t ", "&amp;", "<start_of_text>", "a <end_of_text> b", "!!<start_of_text>",
        "İ", "ß", "ΣΑΣ", "ﬁ", "\x00\x07 bell", "\ufeffbom", "A" * 300, "a " * 200,
    ]
    out = list(edge)
    while len(out) < n:
        r = rng.random()
        if r < 0.35:
            out.append(_english(rng, rng.randint(1, 25)))
        elif r < 0.93:
            out.append(_mixed(rng))
        elif r < 0.97:
            script = rng.choice(list(_SCRIPTS.values()))
            out.append(" ".join(rng.choice(script.split(" ")) for _ in range(rng.randint(1, 12))))
        elif r < 0.995:
            out.append(" ".join(_mixed(rng) for _ in range(rng.randint(10, 40))))  # very long
        else:
            out.append(rng.choice(["", " ", "\t"]))
    return out[:n]
