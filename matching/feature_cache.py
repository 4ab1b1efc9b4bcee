"""A per-process cache of the second stage's stored features (`detail` of indexed items), unpacked.

A lookup re-ranks the index's top N candidates; reading their feature blobs from the database and
unpacking them on every lookup costs more than the re-ranking itself. Each entry is stamped with what
the item's row says about the features it holds (model version, indexed_at, indexed revision): a
re-index or an edit changes the stamp, so a changed item is never served from an old entry. The cache
is bounded in bytes (least recently used entries go first) and safe to share between threads.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from django.conf import settings


STAMP_FIELDS = ("model_version_id", "indexed_at", "indexed_revision")


def stamp(row) -> tuple:
    """What identifies the features a row holds now."""
    return tuple(getattr(row, f) for f in STAMP_FIELDS)


class FeatureCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int], tuple[tuple, object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def details(self, model, rows) -> dict[int, object | None]:
        """pk -> unpacked detail (`ml.serving.two_stage.VideoDetail` / `ProductDetail`) of each row, None where
        the row has none. ``rows`` may defer ``detail``: the missing ones are read in one query."""
        label = model._meta.label
        out, missing = {}, {}
        with self._lock:
            for row in rows:
                entry = self._entries.get((label, row.pk))
                if entry is not None and entry[0] == stamp(row):
                    self._entries.move_to_end((label, row.pk))
                    out[row.pk] = entry[1]
                else:
                    missing[row.pk] = stamp(row)
            self.hits += len(out)
            self.misses += len(missing)
        if missing:
            out |= self._load(model, label, missing)
        return out

    def _load(self, model, label: str, wanted: dict[int, tuple]) -> dict[int, object | None]:
        unpack = _unpacker(model)
        loaded = {}
        for pk, blob, *now in model.objects.filter(pk__in=list(wanted)).values_list("pk", "detail", *STAMP_FIELDS):
            now = tuple(now)
            detail = None if blob is None else unpack(bytes(blob))
            # Re-indexed between the caller's read and this one: not the features the caller's row describes.
            loaded[pk] = detail if now == wanted[pk] else None
            if detail is not None:
                self._put((label, pk), now, detail, len(blob))
        return {pk: loaded.get(pk) for pk in wanted}

    def _put(self, key, row_stamp: tuple, detail, size: int) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._entries[key] = (row_stamp, detail, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _unpacker(model):
    from matching.models import MicroVideo
    from ml.serving.two_stage import ProductDetail, VideoDetail

    return VideoDetail.from_bytes if model is MicroVideo else ProductDetail.from_bytes


_cache: FeatureCache | None = None
_cache_lock = threading.Lock()


def feature_cache() -> FeatureCache:
    """This process's cache, sized by ``MVMATCH_FEATURE_CACHE_MB`` (0 keeps nothing)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = FeatureCache(int(settings.MVMATCH_FEATURE_CACHE_MB * 2**20))
        return _cache
