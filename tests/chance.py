"""How likely a random model is to do as well as a measured one: the bounds of the quality checks.

A random model ranks the true item of each query uniformly among the gallery, independently across
queries. A quality check passes only where that probability is under 1 %.
"""
from math import comb

import numpy as np

BOUND = 0.01


def rank_sum_chance(ranks: list[float], gallery: int) -> float:
    """P(a random model's sum of ranks <= sum(ranks)), each rank uniform on 1..gallery; exact, by convolution.

    12 queries against a gallery of 12: a sum of 49 (mean rank 4.08) or less has probability 0.0079, 50
    has 0.0100; a random model's expected sum is 78 (mean rank 6.5).
    """
    assert all(1 <= r <= gallery for r in ranks), f"ranks {ranks} outside 1..{gallery}"
    dist = np.array([1.0])
    for _ in ranks:
        dist = np.convolve(dist, np.full(gallery, 1 / gallery))  # dist[i] = P(sum == i + queries so far)
    return float(dist[: int(round(sum(ranks))) - len(ranks) + 1].sum())


def hits_chance(hits: int, queries: int, k: int, gallery: int) -> float:
    """P(a random model puts the true item in its top k for at least ``hits`` of ``queries``): the binomial
    tail with p = k / gallery.

    12 queries, top 5 of 12 (p = 0.417): 10 or more hits have probability 0.0040, 9 or more 0.0206.
    """
    p = k / gallery
    return sum(comb(queries, h) * p ** h * (1 - p) ** (queries - h) for h in range(hits, queries + 1))


def assert_rank_sum_beats_chance(ranks: list[float], gallery: int, what: str) -> None:
    p = rank_sum_chance(ranks, gallery)
    assert p < BOUND, f"{what}: ranks {ranks} in a gallery of {gallery}; a random model does as well with p={p:.3f}"


def assert_hits_beat_chance(hits: int, queries: int, k: int, gallery: int, what: str) -> None:
    p = hits_chance(hits, queries, k, gallery)
    assert p < BOUND, (f"{what}: {hits} of {queries} in the top {k} of {gallery}; "
                       f"a random model does as well with p={p:.3f}")
