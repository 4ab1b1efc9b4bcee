"""Product and video vector indexes in Milvus, one collection per kind and model version.

No Django here: callers pass the URI, token, prefix and model version, so this module can be
tested and used on its own. The same code runs on three backends, chosen by the URI alone:

- a milvus-lite path (``var/milvus.db``): embedded, no server, but only one process may open it;
- ``http://host:port`` of a ``milvus-lite server`` (see :class:`MilvusLiteServer`), which lets the
  web process and the Celery workers share one milvus-lite store;
- ``http://host:port`` of a Milvus standalone or distributed server (where IVF/HNSW pay off).

Vectors are stored L2-normalised and searched with the cosine metric, so a score is the cosine
similarity of the query and the hit, whatever the backend. Which index each backend gets, and at
which consistency lookups read, is `collection_options` (chosen by measurement: `python -m
matching.bench_index`, docs/index-benchmark.md).
"""
from __future__ import annotations

import hashlib
import operator
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import numpy as np

if TYPE_CHECKING:  # pymilvus loads when a client opens, not with Django (every management command imports this)
    from pymilvus import MilvusClient

CATEGORY_FIELDS = ("upper_id", "middle_id", "lower_id")
MAX_TOP_K = 16384  # Milvus' limit on k (and on queries per search)
UPSERT_BATCH = 1000  # rows per request: keeps gRPC messages far below the server's size limit
MILVUS_LITE_FLUSH_ROWS = 256  # on milvus-lite, upsert() flushes once this many rows are unflushed
PORT_ATTEMPTS = 5  # a free port may be taken by another process before a server started here binds it
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class IndexSchemaError(RuntimeError):
    """An existing collection does not have the schema this code expects (e.g. another dim)."""


class Hit(NamedTuple):
    id: int
    score: float  # cosine similarity, higher is closer


# --- connections ------------------------------------------------------------------------------

_clients: dict[tuple[int, str, str | None], MilvusClient] = {}
_clients_lock = threading.Lock()

# pymilvus pings every 10 s even on an idle channel; the milvus-lite server (gRPC's defaults) takes a ping
# without a call as abuse and closes the channel with GOAWAY "too_many_pings", an error line in every
# web and worker log after each idle spell. Pinging only during calls suits every server.
GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": False, "grpc.keepalive_time_ms": 60_000}


def _is_local(uri: str) -> bool:
    return "://" not in uri and not uri.startswith("unix:")


def _client_key(uri: str, token: str | None) -> tuple[int, str, str | None]:
    """The process id is part of the key: a gRPC channel must not be reused across fork (Celery's
    prefork pool), so a child opens its own."""
    return os.getpid(), str(Path(uri).expanduser().resolve()) if _is_local(uri) else uri, token


def connect(uri: str, token: str | None = None) -> MilvusClient:
    """A client for ``uri`` (milvus-lite path or server URL), shared per (uri, token) within a process."""
    key = _client_key(uri, token)
    uri, local = key[1], _is_local(uri)
    if local:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            try:
                client = MilvusClient(uri=uri, token=token or "", grpc_options=GRPC_OPTIONS)
            except MilvusException as exc:
                if not local:
                    raise
                raise RuntimeError(
                    f"cannot open milvus-lite store {uri}: a milvus-lite store can be opened by one process "
                    "only; if several processes need it, run `milvus-lite server --data-dir ...` (see "
                    "milvus_lite_server) and connect to its http:// URI") from exc
            _clients[key] = client
        return client


def disconnect(uri: str, token: str | None = None) -> None:
    """Close this process's client for ``uri``; for a milvus-lite path, also free the store for other processes."""
    key = _client_key(uri, token)
    with _clients_lock:
        client = _clients.pop(key, None)
    if client is not None:
        client.close()
    if _is_local(uri):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(key[1])


# --- validation -------------------------------------------------------------------------------

def _int(value) -> int:
    """A plain int from an int-like value; rejects bools, floats and strings (they never reach a filter)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"expected an integer id, got {value!r}")
    return int(operator.index(value))


def _ints(values: Iterable, what: str) -> list[int]:
    try:
        return [_int(v) for v in values]
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}") from None


def _unit_rows(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Float32 [N, dim] rows scaled to unit length; raises ValueError on bad shape or values."""
    array = np.asarray(vectors)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"vectors must have shape [N, {dim}], got {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"vectors must be real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are rejected just below
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError("vectors contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("vectors contain all-zero rows (no direction to compare by cosine)")
    return array / norms


def _filter_expr(upper_id=None, middle_id=None, lower_ids=None, exclude_ids=None) -> str:
    """A Milvus boolean expression built from integers only, so no caller text can reach it."""
    clauses = []
    if upper_id is not None:
        clauses.append(f"upper_id == {_int(upper_id)}")
    if middle_id is not None:
        clauses.append(f"middle_id == {_int(middle_id)}")
    if lower_ids is not None:
        clauses.append(f"lower_id in {_ints(lower_ids, 'lower_ids')}")
    if exclude_ids:
        clauses.append(f"id not in {_ints(exclude_ids, 'exclude_ids')}")
    return " and ".join(clauses)


def version_slug(version: str) -> str:
    """A collection-name-safe form of a model version; a hash suffix keeps lossy slugs distinct."""
    slug = re.sub(r"[^a-z0-9]+", "_", version.lower()).strip("_")
    if not slug:
        raise ValueError(f"model version {version!r} has no letters or digits")
    if slug != version:
        slug = f"{slug}_{hashlib.sha1(version.encode()).hexdigest()[:8]}"
    return slug


# --- collections ------------------------------------------------------------------------------

@dataclass
class _ClientState:
    """What this process knows about the collections behind one client."""

    milvus_lite: bool
    ensured: set[str] = field(default_factory=set)  # checked once; later operations skip ensure()
    unflushed: Counter = field(default_factory=Counter)  # rows upserted since the last flush, per collection


_states: weakref.WeakKeyDictionary[MilvusClient, _ClientState] = weakref.WeakKeyDictionary()


def _state(client: MilvusClient) -> _ClientState:
    state = _states.get(client)
    if state is None:
        state = _states[client] = _ClientState(milvus_lite=client.get_server_version().startswith("milvus_lite"))
    return state


class VectorCollection:
    """One Milvus collection of unit vectors keyed by database id, with category ids to filter on.

    Every operation makes sure the collection exists first (once per process); call ensure()
    yourself to fail early when a collection of another dim is in the way.

    ``consistency_level`` "Strong" makes an upsert visible to the very next get/search, from any
    process; on a Milvus server that costs ~0.2 s per read, "Bounded" reads in milliseconds but
    may miss writes of the last second or so.
    """

    kind: ClassVar[str]

    def __init__(self, client: MilvusClient, version: str, dim: int, *, prefix: str = "",
                 index_type: str = "FLAT", index_params: Mapping | None = None,
                 search_params: Mapping | None = None, consistency_level: str = "Strong"):
        if prefix and not _NAME_RE.fullmatch(prefix):
            raise ValueError(f"collection prefix {prefix!r} must be letters, digits and underscores")
        if _int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.client = client
        self.dim = int(dim)
        self.name = f"{prefix}{self.kind}_{version_slug(version)}"
        self.index_type = index_type
        self.index_params = dict(index_params or {})
        self.search_params = dict(search_params or {})
        self.consistency_level = consistency_level

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.dim})"

    # -- lifecycle --

    def exists(self) -> bool:
        return self.client.has_collection(self.name)

    def ensure(self) -> VectorCollection:
        """Create the collection if missing, check its schema if present, and load it for search."""
        if self.exists():
            self._check_schema()
        else:
            self._create()
        self.client.load_collection(self.name)
        _state(self.client).ensured.add(self.name)
        return self

    def drop(self) -> None:
        _state(self.client).ensured.discard(self.name)
        if self.exists():
            self.client.drop_collection(self.name)

    def flush(self) -> None:
        """Seal the rows written so far into indexed segments: call it after bulk indexing."""
        self._ready()
        self.client.flush(self.name)
        _state(self.client).unflushed[self.name] = 0

    def _ready(self) -> None:
        if self.name not in _state(self.client).ensured:
            self.ensure()

    def _create(self) -> None:
        from pymilvus import DataType

        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.dim)
        for category_field in CATEGORY_FIELDS:
            schema.add_field(category_field, DataType.INT64)
        index = self.client.prepare_index_params()
        index.add_index("embedding", index_type=self.index_type, metric_type="COSINE", params=self.index_params)
        self.client.create_collection(self.name, schema=schema, index_params=index,
                                      consistency_level=self.consistency_level)

    def _check_schema(self) -> None:
        fields = {f["name"]: f for f in self.client.describe_collection(self.name)["fields"]}
        missing = {"id", "embedding", *CATEGORY_FIELDS} - fields.keys()
        if missing:
            raise IndexSchemaError(
                f"collection {self.name} exists without fields {sorted(missing)}; drop it to re-index")
        dim = int(fields["embedding"]["params"]["dim"])
        if dim != self.dim:
            raise IndexSchemaError(
                f"collection {self.name} holds {dim}-d vectors but the model makes {self.dim}-d ones; "
                "a model version must keep its dim (use a new version name, or drop the collection)")

    # -- data --

    def upsert(self, ids, vectors: np.ndarray, upper_ids, middle_ids, lower_ids) -> int:
        """Insert or replace rows by id (re-indexing never duplicates). Validates everything first."""
        ids = _ints(ids, "ids")
        rows = _unit_rows(vectors, self.dim)
        categories = [_ints(values, name) for values, name in
                      zip((upper_ids, middle_ids, lower_ids), ("upper_ids", "middle_ids", "lower_ids"))]
        for name, values in zip(("vectors", *CATEGORY_FIELDS), (rows, *categories)):
            if len(values) != len(ids):
                raise ValueError(f"{len(ids)} ids but {len(values)} {name}")
        if len(set(ids)) != len(ids):
            raise ValueError("ids repeat within one upsert")
        if not ids:
            return 0
        self._ready()
        records = [{"id": i, "embedding": v, "upper_id": u, "middle_id": m, "lower_id": lo}
                   for i, v, u, m, lo in zip(ids, rows, *categories)]
        for start in range(0, len(records), UPSERT_BATCH):
            self.client.upsert(self.name, records[start:start + UPSERT_BATCH])
        state = _state(self.client)
        state.unflushed[self.name] += len(records)
        # milvus-lite scans unflushed rows in Python on every search (~0.2 ms per row), so keep them few.
        if state.milvus_lite and state.unflushed[self.name] >= MILVUS_LITE_FLUSH_ROWS:
            self.flush()
        return len(records)

    def delete(self, ids) -> None:
        ids = _ints(ids, "ids")
        if ids:
            self._ready()
            self.client.delete(self.name, ids=ids)

    def get(self, ids) -> dict[int, np.ndarray]:
        """The stored (unit) vectors of those ids that are present."""
        ids = _ints(ids, "ids")
        if not ids:
            return {}
        self._ready()
        found = self._get(ids, self.consistency_level)
        missing = [i for i in ids if i not in found]
        if missing and self.consistency_level != "Strong":  # perhaps written a moment ago: ask again, strictly
            found |= self._get(missing, "Strong")
        return found

    def _get(self, ids: list[int], consistency_level: str) -> dict[int, np.ndarray]:
        rows = self.client.get(self.name, ids=ids, output_fields=["embedding"], consistency_level=consistency_level)
        return {int(r["id"]): np.asarray(r["embedding"], dtype=np.float32) for r in rows}

    def ids(self) -> set[int]:
        """Every id in the collection, read strictly (the reconciler compares them with the database)."""
        if not self.exists():
            return set()
        self._ready()
        rows = self.client.query(self.name, filter="id >= 0", output_fields=["id"], limit=MAX_TOP_K,
                                 consistency_level="Strong")
        if len(rows) < MAX_TOP_K:
            return {int(r["id"]) for r in rows}
        found: set[int] = set()  # more than one query answers: page through them
        iterator = self.client.query_iterator(self.name, batch_size=MAX_TOP_K, filter="id >= 0",
                                              output_fields=["id"], consistency_level="Strong")
        try:
            while batch := iterator.next():
                found.update(int(r["id"]) for r in batch)
        finally:
            iterator.close()
        return found

    def count(self) -> int:
        # count(*) sees unflushed rows and deletions; collection stats on a server do not.
        self._ready()
        rows = self.client.query(self.name, filter="", output_fields=["count(*)"],
                                 consistency_level=self.consistency_level)
        return int(rows[0]["count(*)"])

    def search(self, vectors: np.ndarray, k: int, *, upper_id: int | None = None, middle_id: int | None = None,
               lower_ids: Iterable[int] | None = None, exclude_ids: Iterable[int] | None = None,
               consistency_level: str | None = None) -> list[list[Hit]]:
        """The k nearest rows for each query row, best first, among rows matching every given filter.

        ``lower_ids`` keeps rows in any of those lower categories (an empty list matches nothing);
        ``exclude_ids`` drops those ids before ranking, so up to k other rows still come back;
        ``consistency_level`` overrides the collection's for this search (e.g. "Strong" right after a write).
        """
        k = _int(k)
        if not 1 <= k <= MAX_TOP_K:
            raise ValueError(f"k must be in [1, {MAX_TOP_K}], got {k}")
        queries = _unit_rows(vectors, self.dim)
        lower_ids = None if lower_ids is None else list(lower_ids)
        expr = _filter_expr(upper_id, middle_id, lower_ids, exclude_ids)
        if len(queries) == 0 or lower_ids == []:
            return [[] for _ in queries]
        self._ready()
        results = []
        for start in range(0, len(queries), MAX_TOP_K):
            results += self.client.search(
                self.name, data=list(queries[start:start + MAX_TOP_K]), anns_field="embedding", limit=k,
                filter=expr, output_fields=["id"], consistency_level=consistency_level or self.consistency_level,
                search_params={"metric_type": "COSINE", "params": self.search_params})
        return [[Hit(int(h["id"]), float(h["distance"])) for h in hits] for hits in results]


@dataclass(frozen=True)
class IndexConfig:
    """An index of the embedding field and the parameters its searches use."""

    index_type: str
    index_params: Mapping = field(default_factory=dict)
    search_params: Mapping = field(default_factory=dict)


# Build and search parameters of the index types we measured (docs/index-benchmark.md); other types get
# Milvus' defaults unless parameters are given.
INDEX_DEFAULTS = {
    "FLAT": IndexConfig("FLAT"),
    "HNSW": IndexConfig("HNSW", {"M": 16, "efConstruction": 128}, {"ef": 128}),
    "IVF_FLAT": IndexConfig("IVF_FLAT", {"nlist": 1024}, {"nprobe": 32}),
}
# Chosen by measurement (docs/index-benchmark.md): a Milvus server builds HNSW segment by segment;
# milvus-lite (pure Python, in the client's process) answers fastest from FLAT.
SERVER_INDEX = INDEX_DEFAULTS["HNSW"]
MILVUS_LITE_INDEX = INDEX_DEFAULTS["FLAT"]
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")


def is_milvus_lite(client: MilvusClient) -> bool:
    return _state(client).milvus_lite


def collection_options(client: MilvusClient, index_type: str = "auto", index_params: Mapping | None = None,
                       search_params: Mapping | None = None, consistency_level: str = "Bounded") -> dict:
    """`VectorCollection` keyword arguments for this client's backend: ``index_type`` "auto" takes the
    backend's measured choice (`SERVER_INDEX`, `MILVUS_LITE_INDEX`), any other Milvus index type is used as
    given (with `INDEX_DEFAULTS` parameters where it has some); ``index_params`` / ``search_params``
    override the chosen ones key by key. The index type applies
    when a collection is created: an existing collection keeps its index (re-index into a new version).

    Lookups at "Bounded" consistency may miss the writes of the last few seconds on a Milvus server (it
    reads in milliseconds instead of waiting for a time tick); `VectorCollection.get` asks again strictly
    for ids it did not find, and callers that just wrote can search with ``consistency_level="Strong"``."""
    if consistency_level not in CONSISTENCY_LEVELS:
        raise ValueError(f"consistency_level must be one of {CONSISTENCY_LEVELS}, got {consistency_level!r}")
    if index_type.lower() == "auto":
        chosen = MILVUS_LITE_INDEX if is_milvus_lite(client) else SERVER_INDEX
    else:
        chosen = INDEX_DEFAULTS.get(index_type.upper(), IndexConfig(index_type.upper()))
    return {"index_type": chosen.index_type, "index_params": {**chosen.index_params, **(index_params or {})},
            "search_params": {**chosen.search_params, **(search_params or {})}, "consistency_level": consistency_level}


class ProductIndex(VectorCollection):
    """Catalogue products: queried with a video's vector to suggest products for it."""

    kind = "products"


class VideoIndex(VectorCollection):
    """Micro-videos: queried with a product's vector to find videos it fits."""

    kind = "videos"


# --- milvus-lite server -----------------------------------------------------------------------

# Runs `milvus-lite server` with SIGINT restored: a child of a background job inherits an ignored
# SIGINT, and SIGINT is what makes the server close its store cleanly.
_SERVER_MAIN = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "from milvus_lite.cmdline import main; sys.exit(main())")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on the port (gRPC binds with SO_REUSEPORT, so a clash would go unnoticed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class MilvusLiteServer:
    """A ``milvus-lite server`` subprocess, so several processes can share one milvus-lite store.

    Use as a context manager (see milvus_lite_server) or call start() / stop() from a script.
    Its output goes to ``log_path`` (default: ``<data_dir>.log`` beside the data directory).
    """

    def __init__(self, data_dir: str | os.PathLike, host: str = "127.0.0.1", port: int | None = None, *,
                 log_path: str | os.PathLike | None = None, startup_timeout: float = 60.0):
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path else self.data_dir.with_name(self.data_dir.name + ".log")
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self._client_host}:{self.port}"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def start(self) -> str:
        """Start the server and wait until it accepts connections; returns its URI. A port chosen here may be
        taken by another process before the server binds it: then it tries another one."""
        if self.process is not None:
            raise RuntimeError(f"milvus-lite server for {self.data_dir} is already running")
        chosen_here = self.port is None
        if not chosen_here and not _port_is_free(self.host, self.port):
            raise RuntimeError(f"cannot start milvus-lite server: {self.host}:{self.port} is already in use")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        attempts = 0
        while True:
            attempts += 1
            if chosen_here:
                self.port = free_port(self._client_host)
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-u", "-c", _SERVER_MAIN, "server", "--data-dir", str(self.data_dir),
                     "--host", self.host, "--port", str(self.port)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            try:
                self._wait_until_listening()
                return self.uri
            except RuntimeError:
                if not chosen_here or attempts == PORT_ATTEMPTS:
                    raise

    def _wait_until_listening(self) -> None:
        """Wait until the port answers and our process is still the one running (not another on that port)."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise RuntimeError(f"milvus-lite server exited with code {code} while starting "
                                   f"(log {self.log_path}):\n{self.log_tail()}")
            try:
                socket.create_connection((self._client_host, self.port), timeout=0.5).close()
                time.sleep(0.2)
                if self.process.poll() is not None:
                    continue  # the port answered for someone else and our server gave up: reported above
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"milvus-lite server did not listen on {self.uri} within "
                                       f"{self.startup_timeout:.0f}s (log {self.log_path}):\n{self.log_tail()}")
                time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to close its store (SIGINT); kill it if it does not within ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(deque(log, maxlen=lines))
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def milvus_lite_server(data_dir: str | os.PathLike, host: str = "127.0.0.1", port: int | None = None,
                       **kwargs) -> Iterator[str]:
    """Run a milvus-lite server for the duration of a with-block; yields its ``http://host:port`` URI."""
    with MilvusLiteServer(data_dir, host, port, **kwargs) as uri:
        yield uri
