"""The 3-level product category ontology (upper / middle / lower), loaded from the MQMC JSON.

The source names carry slips ("backpank", "vegatable", trailing spaces). We normalise them for
display and keep the original spelling as an alias, so data labelled with the source names
still maps to the same category.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

BUNDLED_PATH = Path(__file__).resolve().parents[1] / "data" / "mqmc_ontology.json"
LEVELS = ("upper", "middle", "lower")

# Known spelling slips of the source file (after whitespace clean-up and lower-casing).
SPELLING_FIXES = {
    "backpank": "backpack",
    "chesk bag": "chest bag",
    "inclined shoulder bage": "inclined shoulder bag",
    "vegatable": "vegetable",
    "minced vegatable machine": "minced vegetable machine",
    "lce packs": "ice packs",
    "tes tray": "tea tray",
    "chrysanthermum": "chrysanthemum",
}


class UnknownCategory(KeyError):
    """Raised when a category path, name or id is not in the ontology."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else "unknown category"


def normalise_name(name: str) -> str:
    clean = re.sub(r"\s+", " ", name).strip().lower()
    return SPELLING_FIXES.get(clean, clean)


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", normalise_name(name)).strip("-")


@dataclass
class Category:
    index: int  # position in pre-order; stable for a given ontology file
    level: int  # 0 upper, 1 middle, 2 lower
    name: str  # normalised display name
    original_name: str  # spelling in the source file
    path: str  # slug path, e.g. "clothes/bags/backpack"
    parent: "Category | None" = None
    children: list["Category"] = field(default_factory=list)
    level_index: int = 0  # position among the categories of the same level (e.g. the queue id of a middle)

    @property
    def level_name(self) -> str:
        return LEVELS[self.level]

    def ancestor(self, level: int) -> "Category":
        node = self
        while node.level > level:
            node = node.parent
        if node.level != level:
            raise ValueError(f"{self.path} has no ancestor at level {level}")
        return node

    @property
    def lineage(self) -> list["Category"]:
        node, out = self, []
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


class Ontology:
    def __init__(self, roots: list[Category]):
        self.roots = roots
        self.nodes: list[Category] = []
        self.by_level: list[list[Category]] = [[], [], []]
        stack = list(reversed(roots))
        while stack:
            node = stack.pop()
            node.index = len(self.nodes)
            node.level_index = len(self.by_level[node.level])
            self.nodes.append(node)
            self.by_level[node.level].append(node)
            stack.extend(reversed(node.children))
        self._by_path = {n.path: n for n in self.nodes}
        self._aliases: dict[str, list[Category]] = {}
        for n in self.nodes:
            for key in {n.name, normalise_name(n.original_name), n.original_name.strip().lower(), slugify(n.name)}:
                self._aliases.setdefault(key, []).append(n)

    @property
    def upper(self) -> list[Category]:
        return self.by_level[0]

    @property
    def middle(self) -> list[Category]:
        return self.by_level[1]

    @property
    def lower(self) -> list[Category]:
        return self.by_level[2]

    def __len__(self) -> int:
        return len(self.nodes)

    def get(self, ref: str) -> Category:
        """Find a category by path ("food/vegetable/potato", original spellings accepted) or by a unique name."""
        ref = ref.strip()
        if "/" in ref:
            parts = [slugify(p) for p in ref.strip("/").split("/")]
            node = self._by_path.get("/".join(parts))
            if node is None:
                raise UnknownCategory(f"unknown category path {ref!r}")
            return node
        matches = self._aliases.get(ref.lower()) or self._aliases.get(normalise_name(ref)) or []
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UnknownCategory(f"unknown category {ref!r}")
        raise UnknownCategory(
            f"category name {ref!r} is ambiguous; use a path: " + ", ".join(m.path for m in matches)
        )


def load_ontology(path: str | Path = BUNDLED_PATH) -> Ontology:
    """Parse the nested {"name", "children"} JSON; the root node ("product") is dropped.

    Siblings repeated in the source collapse into one category, so every path is unique.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))

    def build(raw: dict, level: int, parent: Category | None) -> Category:
        name = normalise_name(raw["name"])
        path_ = (parent.path + "/" if parent else "") + slugify(raw["name"])
        node = Category(index=-1, level=level, name=name, original_name=raw["name"], path=path_, parent=parent)
        if level < 2:
            seen: dict[str, Category] = {}
            for child in raw.get("children", []):
                built = build(child, level + 1, node)
                seen.setdefault(built.path, built)  # the source repeats a few siblings ("socks"): keep one
            node.children = list(seen.values())
        return node

    return Ontology([build(u, 0, None) for u in data["children"]])
