"""Training-step time, throughput and peak memory: MQMC vs in-batch InfoNCE (vs MoCo), same run.

    python -m ml.evaluation.bench_step --device cpu
    python -m ml.evaluation.bench_step --device cuda --steps 50

Paper setting by default: 2048-d frames / photos, 768-d text, T = 10 frames, 1 photo, batch 256,
30 middle-category queues x 2048 keys (filled with random keys before timing, so every step does
the full work). A step is forward + backward + Adam update. Each method runs in its own fresh
process so that peak memory is its own: on CPU the process's peak RSS (``resource``; torch tensors
bypass ``tracemalloc``) and its growth over the process right after importing torch; on CUDA
``torch.cuda.max_memory_allocated`` over the timed steps.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ml.serving.towers import InstanceConfig
from ml.training.data import PairBatch
from ml.training.losses import InBatchContrast, LossConfig
from ml.training.mqmc import MQMCConfig, MultiQueueMoCo

METHODS = ("mqmc", "moco", "infonce")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _random_batch(args, cfg: InstanceConfig, step: int, device: torch.device) -> PairBatch:
    g = torch.Generator().manual_seed(step)
    b = args.batch_size
    return PairBatch(
        video_frames=torch.randn(b, args.frames, cfg.visual_dim, generator=g),
        video_frame_mask=torch.ones(b, args.frames, dtype=torch.bool),
        video_caption=torch.randn(b, cfg.text_dim, generator=g),
        product_images=torch.randn(b, args.images, cfg.visual_dim, generator=g),
        product_image_mask=torch.ones(b, args.images, dtype=torch.bool),
        product_text=torch.randn(b, cfg.text_dim, generator=g),
        middle=torch.randint(0, 30, (b,), generator=g),
        product_index=torch.arange(b) + step * b,
    ).to(device)


def run_method(method: str, args) -> dict:
    """Time ``args.steps`` training steps of one method in this process."""
    rss_start = _rss_mib()
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = InstanceConfig.preset("mqmc-paper")
    if method == "infonce":
        model = InBatchContrast(cfg, LossConfig())
        negatives = args.batch_size - 1
    else:
        mqmc = MQMCConfig(queue_size=args.queue_size, multi_queue=method == "mqmc", reweight_negatives=method == "mqmc")
        model = MultiQueueMoCo(cfg, LossConfig(), mqmc)
        for queue in (model.video_queue, model.product_queue):  # full queues: every slot a real negative
            n = queue.keys.shape[0] * queue.keys.shape[1]
            queue.enqueue(F.normalize(torch.randn(n, cfg.proj_dim), dim=1), torch.arange(n) % 30, torch.arange(n) + 10**9)
        negatives = model.product_queue.keys.shape[0] * args.queue_size
    model.to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = [_random_batch(args, cfg, i, device) for i in range(2)]

    def step(batch: PairBatch) -> None:
        loss = model(batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(args.warmup):
        step(batches[i % 2])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(batches[i % 2])
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    result = {"method": method, "negatives": negatives, "ms_per_step": ms, "samples_per_s": args.batch_size / (ms / 1000)}
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mib"] = _rss_mib()
        result["growth_mib"] = result["peak_mib"] - rss_start
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--methods", default="mqmc,infonce", help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--queue-size", type=int, default=2048, help="keys per middle-category queue")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)  # internal: run one method, print JSON
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(run_method(args.worker, args)))
        return

    forwarded = list(argv if argv is not None else sys.argv[1:])
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    rows = []
    for method in args.methods.split(","):
        if method not in METHODS:
            parser.error(f"unknown method {method!r}")
        done = subprocess.run([sys.executable, "-m", "ml.evaluation.bench_step", *forwarded, "--worker", method],
                              check=True, capture_output=True, text=True, env=env)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device}; batch {args.batch_size}, 2048-d visual / 768-d text, T={args.frames}, "
          f"{args.images} photo(s), {args.steps} timed steps (median)\n")
    memory = "peak GPU memory (MiB)" if args.device.startswith("cuda") else "peak RSS (MiB) | RSS growth (MiB)"
    print(f"| method | negatives / query | ms / step | samples / s | {memory} |")
    print("|---" * (5 + (not args.device.startswith("cuda"))) + "|")
    for r in rows:
        memory = f"{r['peak_mib']:.0f}" + (f" | {r['growth_mib']:.0f}" if "growth_mib" in r else "")
        print(f"| {r['method']} | {r['negatives']} | {r['ms_per_step']:.1f} | {r['samples_per_s']:.0f} | {memory} |")


if __name__ == "__main__":
    main()
