"""A bounded load test of a running mvmatch web server on this machine (loopback only, 60 s at most).

    .venv/bin/python deploy/loadtest.py --token KEY --clients 50 --seconds 30 --pid-file var/web.pid

N clients, each on its own keep-alive connection, request in a loop, as fast as answers come: ad
suggestions of the indexed videos (``/api/videos/{id}/suggestions/``), the videos of the products
(``/api/products/{id}/videos/``) and text searches (``/api/search/?q=...``), in turn. Prints requests
per second, latency p50 / p95 / p99, errors (any status other than 200, or no answer) and the web
server's memory before and after (RSS and PSS summed over the process in ``--pid-file`` and its
children, e.g. gunicorn's master and workers).

All clients use one token, i.e. one user: start the server with throttles above the load
(``MVMATCH_THROTTLE_USER=100000/min MVMATCH_THROTTLE_LOOKUP=100000/min``), or its 429s count as errors.
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote, urlsplit

MAX_SECONDS = 60
QUERIES = ("navy striped backpack", "red dress", "running shoes", "mango", "leather bag", "blue jeans")


def loopback_only(host: str) -> None:
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        sys.exit(f"loadtest: {host} is not a loopback address; this script only loads a server on this machine")


def memory_kib(root_pid: int) -> tuple[int, int, int]:
    """(RSS, PSS in KiB, processes) of ``root_pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    rss = pss = count = 0
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("Rss", "Pss"):
                    kib = int(value.split()[0])
                    rss, pss = (rss + kib, pss) if name == "Rss" else (rss, pss + kib)
        except OSError:
            continue
        count += 1
        stack.extend(children.get(pid, []))
    return rss, pss, count


class Client:
    def __init__(self, base, token: str):
        self.base, self.headers = base, {"Authorization": f"Token {token}"} if token else {}
        self.conn = None

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: open a new one once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.base.hostname, self.base.port or 80, timeout=30)
            try:
                self.conn.request("GET", path, headers=self.headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


def discover(client: Client, limit: int) -> list[str]:
    """The request paths of the run: suggestions of indexed videos, videos of products, text searches."""
    paths = []
    for kind, suffix in (("videos", "suggestions"), ("products", "videos")):
        status, body = client.get(f"/api/{kind}/?page_size={limit}")
        if status != 200:
            sys.exit(f"loadtest: GET /api/{kind}/ answered {status}: {body[:200]!r} (is the token right?)")
        data = json.loads(body)
        rows = data["results"] if isinstance(data, dict) else data
        paths += [f"/api/{kind}/{r['id']}/{suffix}/" for r in rows if r.get("status") == "indexed"][:limit]
    paths += [f"/api/search/?q={quote(q)}" for q in QUERIES]
    return paths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("MVMATCH_TOKEN", ""), help="API token (or MVMATCH_TOKEN)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--records", type=int, default=20, help="videos and products to look up")
    parser.add_argument("--pid-file", help="the web server's pid file (memory before / after)")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS:
        sys.exit(f"loadtest: --seconds must be in (0, {MAX_SECONDS}]")
    base = urlsplit(args.base)
    loopback_only(base.hostname)
    pid = int(Path(args.pid_file).read_text().split()[0]) if args.pid_file else None

    paths = discover(Client(base, args.token), args.records)
    before = memory_kib(pid) if pid else None
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def run(worker: int) -> None:
        client, i = Client(base, args.token), worker
        mine, bad = [], Counter()
        while time.monotonic() < stop_at:
            path = paths[i % len(paths)]
            i += args.clients
            started = time.perf_counter()
            try:
                status, _ = client.get(path)
            except (http.client.HTTPException, OSError) as exc:
                bad[type(exc).__name__] += 1
                continue
            mine.append(time.perf_counter() - started)
            if status != 200:
                bad[f"HTTP {status}"] += 1
        with lock:
            latencies.extend(mine)
            errors.update(bad)

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=MAX_SECONDS + 35)
    elapsed = time.monotonic() - started
    after = memory_kib(pid) if pid else None

    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else float("nan")

    report = {"clients": args.clients, "seconds": round(elapsed, 1), "paths": len(paths),
              "requests": len(latencies), "req_per_s": round(len(latencies) / elapsed, 1),
              "p50_ms": round(pct(50), 1), "p95_ms": round(pct(95), 1), "p99_ms": round(pct(99), 1),
              "errors": sum(errors.values()), "error_kinds": dict(errors)}
    if before and after:
        report |= {"web_processes": after[2], "web_rss_mib_before": round(before[0] / 1024), "web_rss_mib_after":
                   round(after[0] / 1024), "web_pss_mib_before": round(before[1] / 1024),
                   "web_pss_mib_after": round(after[1] / 1024)}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
