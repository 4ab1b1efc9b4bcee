"""Sampling the catalogue: lower categories, products with visual attributes, titles and descriptions.

Products of one lower category are variants of one base design (each changes a few attributes), so
the hardest negatives share the category and differ only in colour, pattern, texture or shape.
"""
from __future__ import annotations

import math
import string
from functools import lru_cache

import numpy as np

from ml.serving.ontology import Category, Ontology, load_ontology
from .config import SPLITS, DatasetConfig
from .manifest import Product
from .vocab import (BRAND_SYLLABLES, COLOURS, DEFAULT_PRICE_RANGE, DESCRIPTION_WORDS, PATTERNS, PRICE_RANGES,
                    SHAPES, TEXTURES, TITLE_SUFFIXES, TITLE_WORDS, USAGE, VISUAL_ATTRIBUTES)

N_BRANDS = 40
ATTRIBUTE_VALUES = {"colour": tuple(COLOURS), "accent_colour": tuple(COLOURS), "pattern": PATTERNS,
                    "texture": TEXTURES, "shape": SHAPES}


@lru_cache(maxsize=1)
def ontology() -> Ontology:
    return load_ontology()


def select_lowers(onto: Ontology, config: DatasetConfig, rng: np.random.Generator) -> list[Category]:
    """All lower categories, or `n_lower` of them in groups of siblings, in ontology order."""
    if config.n_lower is None:
        return list(onto.lower)
    per_middle = max(1, config.lowers_per_middle)
    middles = [m for m in onto.middle if len(m.children) >= per_middle]
    n_middles = math.ceil(config.n_lower / per_middle)
    chosen: list[Category] = []
    for m in sorted(rng.choice(len(middles), size=n_middles, replace=False)):
        kids = middles[m].children
        chosen += [kids[i] for i in sorted(rng.choice(len(kids), size=per_middle, replace=False))]
    return chosen[: config.n_lower]


def visible_key(attrs: dict[str, str]) -> tuple:
    """What can be seen of the attributes: the accent colour is invisible on a solid product."""
    accent = None if attrs["pattern"] == "solid" else attrs["accent_colour"]
    return attrs["colour"], accent, attrs["pattern"], attrs["texture"], attrs["shape"]


def random_attributes(rng: np.random.Generator) -> dict[str, str]:
    attrs = {name: str(rng.choice(ATTRIBUTE_VALUES[name])) for name in VISUAL_ATTRIBUTES}
    while attrs["accent_colour"] == attrs["colour"]:
        attrs["accent_colour"] = str(rng.choice(ATTRIBUTE_VALUES["accent_colour"]))
    return attrs


def variant_attributes(base: dict[str, str], n_changes: int, rng: np.random.Generator) -> dict[str, str]:
    attrs = dict(base)
    for name in rng.choice(VISUAL_ATTRIBUTES, size=n_changes, replace=False):
        options = [v for v in ATTRIBUTE_VALUES[name] if v != base[name]]
        attrs[str(name)] = str(rng.choice(options))
    if attrs["accent_colour"] == attrs["colour"]:
        attrs["accent_colour"] = str(rng.choice([c for c in COLOURS if c != attrs["colour"]]))
    return attrs


def category_attribute_sets(n: int, visual_difficulty: float, rng: np.random.Generator) -> list[dict[str, str]]:
    """`n` visibly distinct attribute sets; the harder, the fewer attributes a variant changes from the base."""
    base = random_attributes(rng)
    max_changes = 1 + round(3 * (1.0 - visual_difficulty))
    out, seen = [], set()
    while len(out) < n:
        attrs = base if not out else variant_attributes(base, int(rng.integers(1, max_changes + 1)), rng)
        if visible_key(attrs) not in seen:
            seen.add(visible_key(attrs))
            out.append(attrs)
    return out


def make_brands(rng: np.random.Generator, n: int = N_BRANDS) -> list[str]:
    brands: set[str] = set()
    while len(brands) < n:
        syllables = rng.choice(BRAND_SYLLABLES, size=int(rng.integers(2, 4)))
        brands.add("".join(syllables).capitalize())
    return sorted(brands)


def title_case(words: str) -> str:
    return string.capwords(words)


def make_title(category: Category, attrs: dict[str, str], brand: str, model: str, rng: np.random.Generator) -> str:
    colour = title_case(attrs["colour"])
    pattern = "" if attrs["pattern"] == "solid" else TITLE_WORDS["pattern"][attrs["pattern"]]
    if pattern:
        colour = f"{colour} & {title_case(attrs['accent_colour'])}"
    texture = TITLE_WORDS["texture"][attrs["texture"]]
    shape = TITLE_WORDS["shape"][attrs["shape"]]
    noun = title_case(category.name)
    suffix = str(rng.choice(TITLE_SUFFIXES))
    templates = (
        f"{brand} {colour} {pattern} {noun} - {texture} {shape} {model}",
        f"{brand} {shape} {noun} {colour} {pattern} {texture}, {suffix}",
        f"{colour} {pattern} {texture} {noun} by {brand} ({model})",
        f"{brand} {model} {texture} {shape} {pattern} {noun}, {colour} - {suffix}",
    )
    return " ".join(str(rng.choice(templates)).split())


def make_description(category: Category, attrs: dict[str, str], brand: str, model: str) -> str:
    colours = attrs["colour"] if attrs["pattern"] == "solid" else f"{attrs['colour']} and {attrs['accent_colour']}"
    upper = category.ancestor(0)
    return (
        f"{brand} {category.name} ({category.parent.name}) in {colours} with a "
        f"{DESCRIPTION_WORDS['pattern'][attrs['pattern']]} pattern and a {attrs['texture']} finish. "
        f"{DESCRIPTION_WORDS['shape'][attrs['shape']]} {USAGE.get(upper.path, '')} Model {model}."
    ).replace("  ", " ")


def make_price(category: Category, rng: np.random.Generator) -> float:
    low, high = PRICE_RANGES.get(category.ancestor(0).path, DEFAULT_PRICE_RANGE)
    return round(max(1.0, round(math.exp(rng.uniform(math.log(low), math.log(high))))) - 0.01, 2)


def sample_products(config: DatasetConfig, seed: int, image_ext: str = "jpg") -> list[Product]:
    """The whole catalogue, split by product, with the relative paths its photos will be written to."""
    rng = np.random.default_rng([seed, 0])
    onto = ontology()
    brands = make_brands(rng)
    lowers = select_lowers(onto, config, rng)
    per_lower = sum(config.products_per_lower.values())
    products: list[Product] = []
    for category in lowers:
        splits = [s for s in SPLITS for _ in range(config.products_per_lower.get(s, 0))]
        splits = [splits[i] for i in rng.permutation(len(splits))]
        for k, attrs in enumerate(category_attribute_sets(per_lower, config.visual_difficulty, rng)):
            sku = f"{config.name}{seed}-{category.level_index:03d}-{k:02d}"
            brand = str(rng.choice(brands))
            model = f"{''.join(rng.choice(list(string.ascii_uppercase), size=2))}-{rng.integers(100, 1000)}"
            n_photos = int(rng.integers(config.photos_per_product[0], config.photos_per_product[1] + 1))
            products.append(Product(
                sku=sku,
                title=make_title(category, attrs, brand, model, rng),
                description=make_description(category, attrs, brand, model),
                price=make_price(category, rng),
                category_path=category.path,
                attributes={**attrs, "brand": brand, "model": model},
                split=splits[k],
                images=[f"images/{sku}-{i}.{image_ext}" for i in range(n_photos)],
            ))
    return products
