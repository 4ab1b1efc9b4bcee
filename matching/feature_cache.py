"""A per-process cache of the second stage's stored features (`detail` of indexed items), unpacked and prepared.

A lookup re-ranks the index's top N candidates; reading their feature blobs from the database, unpacking
them and running them through the re-ranking head's learned maps on every lookup costs more than the
re-ranking itself, so each item's features are kept in the form the second stage reads
(`ml.serving.two_stage.TwoStage.prepare`). Each entry is stamped with what the item's row says about the
features it holds: the model version and the content revision they were computed from. Features are
written only by publishing an ingest (`services._publish`), and every re-index, edit or admin action
bumps the revision first (`services.requeue`), so a changed item is never served from an old entry
(primary keys are never reused: AUTOINCREMENT on SQLite, sequences elsewhere). The cache is bounded in
bytes (least recently used entries go first) and safe to share between threads.

The rows are read with one hand-written SELECT (`read_rows`): building the ORM query costs several
times what the database takes to answer it, on every lookup.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterable

from django.conf import settings
from django.db import connections, router


STAMP_FIELDS = ("model_version_id", "indexed_revision")


def stamp(row) -> tuple:
    """What identifies the features a row holds now."""
    return tuple(getattr(row, f) for f in STAMP_FIELDS)


def read_rows(model, pks: Iterable[int], fields: tuple[str, ...]) -> list[tuple]:
    """(pk, *fields) of the rows of ``model`` with these primary keys, as named tuples, in one SELECT."""
    pks = [int(pk) for pk in pks]
    if not pks:
        return []
    sql, row = _select(model, fields, len(pks))
    with connections[router.db_for_read(model)].cursor() as cursor:
        cursor.execute(sql, pks)
        return [row._make(values) for values in cursor.fetchall()]


@functools.lru_cache(maxsize=256)
def _select(model, fields: tuple[str, ...], count: int) -> tuple[str, type]:
    meta = model._meta
    quote = connections[router.db_for_read(model)].ops.quote_name
    columns = ", ".join(quote(meta.get_field(f).column) for f in (meta.pk.name, *fields))
    sql = (f"SELECT {columns} FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} IN "
           f"({', '.join(['%s'] * count)})")
    return sql, namedtuple("Row", ("pk", *fields))


class FeatureCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        # ((model label, prepared?), pk) -> (stamp, detail, bytes), least recently used first
        self._entries: OrderedDict[tuple[tuple[str, bool], int], tuple[tuple, object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def details(self, model, rows, prepare: Callable | None = None) -> dict[int, object | None]:
        """pk -> unpacked detail (`ml.serving.two_stage.VideoDetail` / `ProductDetail`) of each row, passed through
        ``prepare`` if given (the second stage of the rows' model version: the stamp names the version), None
        where the row has none. ``rows`` may defer ``detail``: the missing ones are read in one query."""
        label = (model._meta.label, prepare is not None)
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
            out |= self._load(model, label, missing, prepare)
        return out

    def _load(self, model, label: tuple, wanted: dict[int, tuple], prepare: Callable | None) -> dict[int, object | None]:
        unpack = _unpacker(model)
        loaded = {}
        for pk, blob, *now in read_rows(model, wanted, ("detail", *STAMP_FIELDS)):
            now = tuple(now)
            if blob is None:
                continue
            detail = unpack(bytes(blob))
            if prepare is not None:
                detail = prepare(detail)
            # Re-indexed between the caller's read and this one: not the features the caller's row describes.
            loaded[pk] = detail if now == wanted[pk] else None
            self._put((label, pk), now, detail, _nbytes(detail))
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


def _nbytes(value) -> int:
    """Bytes held by the tensors of a detail (a dataclass of tensors) or of a prepared tuple of them."""
    if hasattr(value, "nbytes"):  # a tensor (or an array); duck-typed so that this module does not import torch
        return value.nbytes
    if dataclasses.is_dataclass(value):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


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
