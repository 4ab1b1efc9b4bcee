"""Reviewer throughput, scripted in real Chromium: decisions per minute by keyboard on the review queue
page against the admin's bulk actions on the match change list, in one run on one site.

    python -m tests.bench_review --base http://127.0.0.1:8000 --user admin --password mvmatch-demo
    python -m tests.bench_review --bundle var/models/demo-v1   # starts its own stack with the demo catalogue

The script decides real matches (it approves and rejects pending ones); run it on a demo, not on data
you care about. It prints one JSON object. The time is the machine's (page, server, database), not a
person's reading time: the queue shows each match whole, the change list shows rows of thumbnails.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from tests.browser import launch, signed_in


def per_minute(decisions: int, seconds: float) -> float:
    return round(60 * decisions / seconds, 1) if seconds else float("inf")


def queue_by_keyboard(page, decisions: int) -> dict:
    """Alternate a / r on the queue page; each decision ends when the next match is on screen."""
    page.goto("/review/")
    page.wait_for_selector("#review-card[data-match]")
    start = time.perf_counter()
    done = 0
    for n in range(decisions):
        before = page.get_attribute("#review-card", "data-match")
        if not before:
            break
        page.keyboard.press("a" if n % 2 == 0 else "r")
        page.wait_for_function(f"document.querySelector('#review-card').dataset.match !== '{before}'")
        done += 1
    seconds = time.perf_counter() - start
    return {"decisions": done, "seconds": round(seconds, 2), "per_minute": per_minute(done, seconds)}


def admin_action(page, rows: int, action: str) -> int:
    """On the change list of pending matches: tick the first ``rows`` rows, choose the action, press Go."""
    page.goto("/admin/matching/match/?status__exact=pending")
    boxes = page.query_selector_all("input.action-select")[:rows]
    for box in boxes:
        box.check()
    page.select_option("select[name=action]", action)
    with page.expect_navigation():
        page.click("button[name=index]")
    return len(boxes)


def admin_bulk(page, decisions: int, per_action: int) -> dict:
    """Admin bulk actions, ``per_action`` rows at a time (1 = one match per action, as when judging each)."""
    start = time.perf_counter()
    done = n = 0
    while done < decisions:
        got = admin_action(page, min(per_action, decisions - done), "approve" if n % 2 == 0 else "reject")
        if not got:
            break
        done, n = done + got, n + 1
    seconds = time.perf_counter() - start
    return {"decisions": done, "rows_per_action": per_action, "seconds": round(seconds, 2),
            "per_minute": per_minute(done, seconds)}


def measure(base: str, user: str, password: str, decisions: int) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        context, page = signed_in(browser, base, user, password)
        result = {"queue_keyboard": queue_by_keyboard(page, decisions),
                  "admin_one_row_per_action": admin_bulk(page, decisions, 1),
                  "admin_bulk_page": admin_bulk(page, decisions, 25)}
        context.close()
        browser.close()
    return result


def own_stack(bundle: Path, workdir: Path):
    """A stack of the test suite's kind with the demo catalogue loaded (`manage.py load_demo`)."""
    from matching.vector_index import MilvusLiteServer
    from tests.stack import Stack

    milvus = MilvusLiteServer(workdir / "milvus")
    stack = Stack(workdir, milvus_uri=milvus.__enter__()).start(bundle)
    stack.manage("load_demo", timeout=1800)
    stack.shell("from django.contrib.auth.models import Group, User\n"
                "u = User.objects.create_user('bench-reviewer', password='bench-review', is_staff=True)\n"
                "u.groups.set(Group.objects.filter(name='reviewer'))")
    return stack, milvus


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="A running site, e.g. the demo's http://127.0.0.1:8000")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", default="mvmatch-demo")
    parser.add_argument("--bundle", type=Path, help="Start a stack with this model bundle instead of --base.")
    parser.add_argument("--decisions", type=int, default=40, help="Decisions per method.")
    args = parser.parse_args(argv)
    if bool(args.base) == bool(args.bundle):
        parser.error("give --base or --bundle")
    if args.base:
        result = measure(args.base, args.user, args.password, args.decisions)
    else:
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mvmatch.settings")
        os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_hex(32))  # the stack's servers inherit it
        django.setup()
        with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
            stack, milvus = own_stack(args.bundle, Path(tmp))
            try:
                result = measure(stack.base, "bench-reviewer", "bench-review", args.decisions)
            finally:
                stack.stop()
                milvus.__exit__(None, None, None)
    queue, admin = result["queue_keyboard"]["per_minute"], result["admin_bulk_page"]["per_minute"]
    result["queue_vs_admin_one_row"] = round(queue / result["admin_one_row_per_action"]["per_minute"], 2)
    result["queue_vs_admin_bulk_page"] = round(queue / admin, 2)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
