"""Benchmark of the vector index per backend, through the project's own `matching.vector_index` path.

    python -m matching.bench_index --rows 100000            # numpy, FAISS, milvus-lite, Milvus standalone
    python -m matching.bench_index --rows 1000000 --backends numpy faiss server-hnsw

Clustered unit vectors (anisotropic Gaussian clusters, 256-d by default) and queries drawn the same
way; for every backend: insert rows/s, index build time, single-query p50 / p95, batched ms per query
and recall@10 against exact search (numpy, same data, same run). FAISS HNSW (``faiss-cpu``, optional)
is the in-process reference. The Milvus standalone comes from the ``milvus`` package (the test extra)
on loopback ports. Progress goes to stderr; the table (Markdown) and ``--json`` to stdout / a file.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from matching.vector_index import (SERVER_INDEX, ProductIndex, collection_options, connect, disconnect,
                                   free_port)

K = 10
BATCH = 100
BUILD_TIMEOUT_S = 3600

# backend name -> (Milvus kind or None, index type, consistency); the Milvus ones go through ProductIndex
MILVUS_BACKENDS = {
    "lite-flat": ("lite", "FLAT", "Bounded"),
    "lite-ivf": ("lite", "IVF_FLAT", "Bounded"),
    "lite-hnsw": ("lite", "HNSW", "Bounded"),
    "server-flat-strong": ("server", "FLAT", "Strong"),  # what every backend got before the tuning
    "server-hnsw": ("server", "HNSW", "Bounded"),
    "server-ivf": ("server", "IVF_FLAT", "Bounded"),
}
BACKENDS = ("numpy", "faiss", *MILVUS_BACKENDS)
DEFAULT_BACKENDS = BACKENDS


@dataclass
class Result:
    backend: str
    rows: int
    insert_rows_per_s: float | None = None
    build_s: float | None = None
    single_p50_ms: float = 0.0
    single_p95_ms: float = 0.0
    batched_ms_per_query: float = 0.0
    recall_at_10: float = 0.0
    notes: dict = field(default_factory=dict)


def progress(message: str) -> None:
    print(f"[bench_index {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def clustered(rows: int, queries: int, dim: int, clusters: int, seed: int, spread: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``clusters`` centres, each cluster stretched along its own axes by up to ``spread``
    (x the centres' scale: the larger, the more clusters overlap and the harder the search); queries alike."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    scales = rng.uniform(0.2, 1.0, (clusters, dim)).astype(np.float32)

    def draw(n: int) -> np.ndarray:
        out = np.empty((n, dim), np.float32)
        for start in range(0, n, 100_000):
            c = rng.integers(0, clusters, min(100_000, n - start))
            out[start:start + len(c)] = centres[c] + spread * scales[c] * rng.standard_normal((len(c), dim), np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return draw(rows), draw(queries)


def neighbour_contrast(vectors: np.ndarray, sample: int = 500, seed: int = 0) -> float:
    """How much nearer a row's 10th neighbour is than a random row: mean cosine distance over mean distance to
    the 10th nearest neighbour (itself excluded). Near 1: no structure (ANN's hardest case); larger: clearer
    neighbourhoods."""
    rng = np.random.default_rng(seed)
    rows = vectors[rng.choice(len(vectors), min(sample, len(vectors)), replace=False)]
    sims = rows @ vectors.T
    tenth = -np.partition(-sims, K, axis=1)[:, K]  # column 0 is the row itself
    return float((1 - sims.mean()) / max(1e-6, (1 - tenth).mean()))


def spread_like(real: np.ndarray, seed: int) -> tuple[float, float]:
    """The cluster spread whose synthetic rows (same count, dimension, rows per cluster) have the neighbour
    contrast of ``real`` (e.g. a model's product embeddings, ``ml.evaluation.embedding_sample``); bisection,
    since contrast falls as spread grows. Returns (spread, the real contrast)."""
    target = neighbour_contrast(real)
    low, high = 0.05, 8.0
    for _ in range(14):
        middle = (low + high) / 2
        synthetic, _ = clustered(len(real), 1, real.shape[1], max(1, len(real) // 100), seed, middle)
        low, high = (middle, high) if neighbour_contrast(synthetic) > target else (low, middle)
    return round((low + high) / 2, 3), target


def exact_top(data: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    scores = queries @ data.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, 1)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t)) / K for f, t in zip(found, truth)]))


def timed_queries(search_one: Callable[[np.ndarray], list[int]], search_batch: Callable[[np.ndarray], list[list[int]]],
                  queries: np.ndarray, truth: np.ndarray, result: Result) -> Result:
    search_one(queries[0])  # warm-up
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        found.append(search_one(q))
        times.append(1000 * (time.perf_counter() - started))
    started = time.perf_counter()
    for s in range(0, len(queries), BATCH):
        search_batch(queries[s:s + BATCH])
    result.batched_ms_per_query = 1000 * (time.perf_counter() - started) / len(queries)
    result.single_p50_ms, result.single_p95_ms = (float(np.percentile(times, p)) for p in (50, 95))
    result.recall_at_10 = recall(found, truth)
    return result


def bench_numpy(data, queries, truth) -> Result:
    def one(q):
        scores = data @ q
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])].tolist()

    return timed_queries(one, lambda qs: exact_top(data, qs).tolist(), queries, truth, Result("numpy exact", len(data)))


def bench_faiss(data, queries, truth, m: int, ef_construction: int, efs: list[int]) -> list[Result]:
    try:
        import faiss
    except ImportError:
        progress("faiss-cpu is not installed: FAISS rows skipped")
        return []
    index = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    started = time.perf_counter()
    index.add(data)
    build = time.perf_counter() - started
    results = []
    for ef in efs:
        index.hnsw.efSearch = ef
        result = Result(f"FAISS HNSW (M {m}, efC {ef_construction}) ef {ef}", len(data),
                        insert_rows_per_s=len(data) / build, build_s=build)
        results.append(timed_queries(lambda q: index.search(q[None], K)[1][0].tolist(),
                                     lambda qs: index.search(qs, K)[1].tolist(), queries, truth, result))
    return results


@contextmanager
def milvus_standalone(base_dir: Path, startup_timeout: float = 300, config: dict[str, str] | None = None
                      ) -> Iterator[str]:
    """Milvus standalone 2.3 from the ``milvus`` package (the test extra), on loopback ports (advertised as
    loopback, not the first NIC), data and binaries under ``base_dir`` (removed afterwards); ``config``: more
    milvus.yaml keys (dotted, e.g. ``dataCoord.segment.maxSize``); yields its URI."""
    import milvus

    server = milvus.MilvusServer(wait_for_started=False)
    server.set_base_dir(str(base_dir))
    server.listen_port = free_port()
    for component in ("rootCoord", "proxy", "queryCoord", "queryNode", "indexCoord", "indexNode",
                      "dataCoord", "dataNode"):
        server.config.set(f"{component}.ip", "127.0.0.1")
    for key, value in (config or {}).items():
        server.config.set(key, value)
    server.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.webservice_port}/healthz", timeout=2) as r:
                    if b"OK" in r.read():
                        break
            except OSError:
                pass
            if server.server_proc.poll() is not None or time.monotonic() > deadline:
                log = (base_dir / "logs" / "milvus-stdout.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"Milvus standalone did not become healthy (exit code "
                                   f"{server.server_proc.poll()}):\n{log}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        server.stop()
        shutil.rmtree(base_dir, ignore_errors=True)  # the unpacked binaries and the data


def bench_milvus(name: str, uri: str, index_type: str, consistency: str, data, queries, truth,
                 efs: list[int], nprobes: list[int], index_params: dict | None = None) -> list[Result]:
    client = connect(uri)
    options = collection_options(client, index_type, index_params, consistency_level=consistency)
    index = ProductIndex(client, version=f"bench_{name}_{len(data)}", dim=data.shape[1], prefix="bench_", **options)
    index.drop()
    index.ensure()
    zeros = np.zeros(len(data), dtype=np.int64)
    started = time.perf_counter()
    for s in range(0, len(data), 20_000):
        index.upsert(np.arange(s, min(s + 20_000, len(data))), data[s:s + 20_000], zeros[s:s + 20_000],
                     zeros[s:s + 20_000], zeros[s:s + 20_000])
        progress(f"{name}: {min(s + 20_000, len(data))} rows inserted")
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    index.flush()
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    reported = 0.0
    while True:  # a server builds the index of sealed segments in the background
        # Every row in an indexed segment and none waiting: segments that compaction merged are searched
        # without an index until theirs is rebuilt, which is not the steady state a lookup sees.
        state = client.describe_index(index.name, "embedding")
        indexed, pending = int(state.get("indexed_rows", len(data))), int(state.get("pending_index_rows", 0))
        if indexed >= len(data) and pending == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: index not built within {BUILD_TIMEOUT_S} s")
        if time.monotonic() - reported > 60:
            progress(f"{name}: {indexed} rows indexed, {pending} pending")
            reported = time.monotonic()
        time.sleep(0.5)
    client.release_collection(index.name)
    client.load_collection(index.name)
    build = time.perf_counter() - started
    progress(f"{name}: flushed, indexed and loaded in {build:.1f} s")
    backend = "milvus-lite" if MILVUS_BACKENDS[name][0] == "lite" else "Milvus standalone"
    variants = ([{**options["search_params"], "ef": ef} for ef in efs] if index_type == "HNSW" else
                [{**options["search_params"], "nprobe": n} for n in nprobes] if index_type.startswith("IVF") else
                [options["search_params"]])
    results = []
    for search_params in variants:
        index.search_params = search_params
        label = f"{backend} {options['index_type']} {options['index_params'] or ''} {search_params or ''} " \
                f"{consistency}".replace("  ", " ")
        result = Result(label, len(data), insert_rows_per_s=len(data) / inserted, build_s=build)
        results.append(timed_queries(lambda q: [h.id for h in index.search(q[None], K)[0]],
                                     lambda qs: [[h.id for h in hits] for hits in index.search(qs, K)],
                                     queries, truth, result))
    index.drop()
    return results


def markdown(results: list[Result], args) -> str:
    like = f" matched to {args.like} (neighbour contrast {args.real_contrast:.3f})" if args.like else ""
    lines = [f"{args.rows:,} rows, {args.dim}-d, {args.clusters} clusters (spread {args.spread}{like}), {args.queries} "
             f"queries, top-{K}, batches of {BATCH}."
             + (f" Milvus standalone settings: {', '.join(args.server_config)}." if args.server_config else ""), "",
             "| backend | insert rows/s | build s | single p50 / p95 ms | batched ms/query | recall@10 |",
             "|---|---|---|---|---|---|"]
    for r in results:
        ins = f"{r.insert_rows_per_s:,.0f}" if r.insert_rows_per_s else "–"
        build = f"{r.build_s:.1f}" if r.build_s is not None else "–"
        lines.append(f"| {r.backend} | {ins} | {build} | {r.single_p50_ms:.2f} / {r.single_p95_ms:.2f} | "
                     f"{r.batched_ms_per_query:.2f} | {r.recall_at_10:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=0, help="default: rows / 100")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(DEFAULT_BACKENDS))
    parser.add_argument("--spread", type=float, default=3.5, help="cluster spread (module doc)")
    parser.add_argument("--like", help="a .npy of real unit vectors (ml.evaluation.embedding_sample): the spread is "
                                       "chosen so that the synthetic rows' neighbour contrast matches theirs")
    parser.add_argument("--efs", type=int, nargs="+", default=[64, SERVER_INDEX.search_params["ef"], 256],
                        help="HNSW search breadths measured on the same index (FAISS and Milvus)")
    parser.add_argument("--index-params", type=json.loads, default=None,
                        help='JSON build parameters over the defaults, e.g. \'{"M": 32, "efConstruction": 256}\'')
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64],
                        help="IVF lists probed, measured on the same index")
    parser.add_argument("--server-config", nargs="+", default=[], metavar="KEY=VALUE",
                        help="milvus.yaml settings of the standalone, e.g. dataCoord.segment.maxSize=2048")
    parser.add_argument("--workdir", help="where the Milvus stores live (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    args.clusters = args.clusters or max(1, args.rows // 100)
    if args.like:
        real = np.load(args.like).astype(np.float32)
        args.dim = real.shape[1]
        args.spread, args.real_contrast = spread_like(real, args.seed)
        progress(f"{args.like}: {len(real)} rows, neighbour contrast {args.real_contrast:.3f} -> spread {args.spread}")

    progress(f"drawing {args.rows} rows + {args.queries} queries")
    data, queries = clustered(args.rows, args.queries, args.dim, args.clusters, args.seed, args.spread)
    truth = exact_top(data, queries)
    results: list[Result] = []
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_index_"))

    def measure(name: str, run: Callable[[], Result | list[Result]]) -> None:
        """One backend (one or more rows); a failure is reported and the others still run."""
        progress(f"{name}: start")
        try:
            rows = run()
        except Exception as exc:  # noqa: BLE001 - the table says which backend failed and why
            progress(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            rows = Result(f"{name} (failed: {type(exc).__name__})", len(data), notes={"error": str(exc)[:500]})
        for result in rows if isinstance(rows, list) else [rows]:
            results.append(result)
            progress(f"{name}: {asdict(result)}")

    try:
        if "numpy" in args.backends:
            measure("numpy", lambda: bench_numpy(data, queries, truth))
        if "faiss" in args.backends:
            graph = {**SERVER_INDEX.index_params, **(args.index_params or {})}
            m, efc = graph["M"], graph["efConstruction"]
            measure("faiss", lambda: bench_faiss(data, queries, truth, m, efc, args.efs))
        tuning = (data, queries, truth, args.efs, args.nprobes, args.index_params)
        lite = [b for b in args.backends if MILVUS_BACKENDS.get(b, ("",))[0] == "lite"]
        server = [b for b in args.backends if MILVUS_BACKENDS.get(b, ("",))[0] == "server"]
        for name in lite:
            uri = str(work / f"{name}.db")
            measure(name, lambda: bench_milvus(name, uri, *MILVUS_BACKENDS[name][1:], *tuning))
            disconnect(uri)
        if server:
            progress("starting Milvus standalone (the `milvus` package)")
            config = dict(item.split("=", 1) for item in args.server_config)
            with milvus_standalone(work / "standalone", config=config) as uri:
                for name in server:
                    measure(name, lambda: bench_milvus(name, uri, *MILVUS_BACKENDS[name][1:], *tuning))
                disconnect(uri)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": [asdict(r) for r in results]}, indent=1))
    return results


if __name__ == "__main__":
    main()
