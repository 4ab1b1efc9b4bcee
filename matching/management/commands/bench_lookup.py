import json
import statistics
import time

import torch
from django.conf import settings
from django.core.management.base import BaseCommand

from catalog.models import Product
from matching.indexing import IndexState
from matching import services
from matching.models import MicroVideo


class Command(BaseCommand):
    help = ("Time the suggestion lookups of indexed videos and products with the second stage against index "
            "order only, in the same run (nothing is written). Also: how often the two orders agree on the "
            "top result, and, with --truth, the true product's rank in both (demo data).")

    def add_arguments(self, parser):
        parser.add_argument("--k", type=int, default=10)
        parser.add_argument("--top-n", type=int, default=settings.MVMATCH_RERANK_TOP_N, help="candidates the second stage re-ranks")
        parser.add_argument("--repeats", type=int, default=3, help="timed lookups per record and setting")
        parser.add_argument("--truth", help="the demo's report (var/demo-report.json): scores both orders "
                                            "by the true product's rank")

    def handle(self, *args, k, top_n, repeats, truth, **options):
        torch.set_num_threads(settings.MVMATCH_TORCH_THREADS)  # as a web worker runs lookups
        truth = {int(v): p for v, p in json.loads(open(truth).read())["truth"].items()} if truth else {}
        report = {}
        for label, model, from_video in (("video -> products", MicroVideo, True),
                                         ("product -> videos", Product, False)):
            objs = list(model.objects.filter(status=IndexState.INDEXED))
            if not objs:
                continue
            for obj in objs:  # warm-up: model loaded, Milvus connected, caches filled
                services.rank_for(obj, k, None, from_video, top_n)
            times = {0: [], top_n: []}
            tops = {}
            for obj in objs:
                for _ in range(repeats):
                    for n in times:  # interleaved, so that a slower moment of the machine weighs on both alike
                        started = time.perf_counter()
                        _, rows = services.rank_for(obj, k, None, from_video, n)
                        times[n].append(1000 * (time.perf_counter() - started))
                        tops[(n, obj.pk)] = [r[1] if from_video else r[0] for r in rows]
            index_ms, second_ms = (statistics.median(times[n]) for n in times)
            row = {"records": len(objs), "index_ms": round(index_ms, 1), "two_stage_ms": round(second_ms, 1),
                   "ratio": round(second_ms / index_ms, 2),
                   "same_top1_pct": round(100 * sum(tops[(0, o.pk)][:1] == tops[(top_n, o.pk)][:1] for o in objs)
                                          / len(objs), 1)}
            if from_video and truth:
                for n, name in ((0, "index"), (top_n, "two_stage")):
                    ranks = [tops[(n, o.pk)].index(truth[o.pk]) + 1 if truth.get(o.pk) in tops[(n, o.pk)] else None
                             for o in objs if o.pk in truth]
                    row[f"{name}_top1_pct"] = round(100 * sum(r == 1 for r in ranks) / len(ranks), 1)
                    row[f"{name}_top{k}_pct"] = round(100 * sum(r is not None for r in ranks) / len(ranks), 1)
            report[label] = row
        self.stdout.write(json.dumps(report, indent=1))
