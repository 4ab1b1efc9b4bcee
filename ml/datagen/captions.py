"""Micro-video captions: partial, noisy, hashtag-laden, often in other words than the title, sometimes empty.

`difficulty` (0..1) is the caption knob of the benchmark: it lowers how often each product word is
mentioned and raises synonyms, typos, truncation, unrelated chatter and empty captions.
`kind` (`CAPTION_KINDS`) says what a caption may carry: product words (the default, above), hashtags
and a word or two, text without product words ("link in bio #fyp"), or nothing.
"""
from __future__ import annotations

import numpy as np

from .catalog import ontology
from .manifest import Product
from .vocab import CAPTION_TEMPLATES, CHATTER, EMOJIS, GENERIC_HASHTAGS, GENERIC_NOUNS, SYNONYMS


def reword(word: str, p_synonym: float, rng: np.random.Generator) -> str:
    options = SYNONYMS.get(word)
    return str(rng.choice(options)) if options and rng.random() < p_synonym else word


def typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 2))
    if rng.random() < 0.5:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # swap two letters
    return word[:i] + word[i + 1:]  # drop one


def category_noun(product: Product, p_synonym: float, rng: np.random.Generator) -> str:
    category = ontology().get(product.category_path)
    roll = rng.random()
    if roll < p_synonym * 0.7:
        return reword(category.name, 1.0, rng)
    if roll < p_synonym * 0.85:
        return category.parent.name  # the middle category: "bags", "snack", ...
    if roll < p_synonym:
        return str(rng.choice(GENERIC_NOUNS))
    return category.name


def hashtags(rng: np.random.Generator, n: int) -> list[str]:
    return [str(t) for t in rng.choice(GENERIC_HASHTAGS, size=min(n, len(GENERIC_HASHTAGS)), replace=False)]


CAPTION_KINDS = ("product_words", "hashtags", "none", "empty")


def hashtag_caption(rng: np.random.Generator) -> str:
    """Hashtags and a word or two, none of them about the product."""
    tags = hashtags(rng, int(rng.integers(2, 6)))
    words = [str(w) for w in rng.choice(GENERIC_NOUNS, size=int(rng.integers(1, 3)), replace=False)]
    return " ".join([*words, *tags] if rng.random() < 0.5 else [*tags, *words])


def wordless_caption(rng: np.random.Generator) -> str:
    """Chatter with emojis and maybe hashtags: text, but nothing that names the product."""
    emojis = [str(e) for e in rng.choice(EMOJIS, size=int(rng.integers(0, 3)))]
    return " ".join([str(rng.choice(CHATTER)), *emojis, *hashtags(rng, int(rng.integers(0, 3)))])


def make_caption(product: Product, rng: np.random.Generator, difficulty: float = 0.5,
                 kind: str = "product_words") -> str:
    if kind == "hashtags":
        return hashtag_caption(rng)
    if kind == "none":
        return wordless_caption(rng)
    if kind == "empty":
        return ""
    if kind != "product_words":
        raise ValueError(f"unknown caption kind {kind!r}; one of {CAPTION_KINDS}")
    d = float(np.clip(difficulty, 0.0, 1.0))
    if rng.random() < 0.04 + 0.16 * d:
        return ""
    tags = hashtags(rng, int(rng.integers(1, 3 + round(3 * d))))
    emojis = [str(e) for e in rng.choice(EMOJIS, size=int(rng.integers(0, 3)))]
    if rng.random() < 0.04 + 0.2 * d:  # says nothing about the product
        return " ".join([str(rng.choice(CHATTER)), *emojis, *tags])

    attrs = product.attributes
    p_syn = 0.2 + 0.5 * d
    mentions = [  # (attribute word, probability that the caption mentions it)
        (attrs["shape"], 0.3 - 0.2 * d),
        (attrs["texture"], 0.4 - 0.3 * d),
        (attrs["colour"], 0.85 - 0.5 * d),
        (attrs["pattern"], 0.0 if attrs["pattern"] == "solid" else 0.6 - 0.4 * d),
    ]
    words = [reword(w, p_syn, rng) for w, p in mentions if rng.random() < p]
    noun = category_noun(product, p_syn, rng) if rng.random() < 0.95 - 0.3 * d else ""
    phrase = " ".join([*words, noun]).strip() or str(rng.choice(GENERIC_NOUNS))
    text = str(rng.choice(CAPTION_TEMPLATES)).format(phrase=phrase)
    if rng.random() < 0.5 - 0.4 * d:
        text = f"{attrs['brand']} {text}" if rng.random() < 0.5 else f"{text} @{attrs['brand'].lower()}"
    if noun and rng.random() < 0.3 + 0.3 * d:
        tags.insert(int(rng.integers(0, len(tags) + 1)), "#" + "".join(noun.split()).replace("'", ""))

    tokens = text.split()
    tokens = [typo(t, rng) if rng.random() < 0.03 + 0.12 * d else t for t in tokens]
    if len(tokens) > 2 and rng.random() < 0.1 + 0.3 * d:  # cut off mid-sentence
        tokens = tokens[: int(rng.integers(1, len(tokens)))]
    parts = [" ".join(tokens), *emojis]
    return " ".join([*tags, *parts] if rng.random() < 0.3 else [*parts, *tags])
