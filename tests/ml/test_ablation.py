"""The ablation command end to end on the tiny dataset: every part a row, the diagnostics, the report."""
from __future__ import annotations

import json

from ml.evaluation.ablation import main
from tests.chance import assert_rank_sum_beats_chance

FAST = ["--epochs", "2", "--batch-size", "8", "--queue-size", "8", "--tower-steps", "3", "--tower-batch", "8",
        "--frames-per-video", "4", "--rerank-epochs", "1", "--no-progress"]


def test_every_part_is_a_row_with_both_directions_text_queries_and_cost(benchmark_data, tmp_path):
    doc = tmp_path / "ablation.md"
    # --base as in the README's command: the rows change the shortcut towers `build_model` trains.
    main(["--data", str(benchmark_data), "--out", str(tmp_path / "out"), "--doc", str(doc), "--base", "mqmc-shortcut",
          *FAST])

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = results["rows"]
    assert {"mean", "seq_transformer", "hierarchical", "salient", "prototypes", "single-frame", "sparse",
            "patch-dropout", "caption", "rerank-text-50", "rerank-photo-200", "category-boost", "category-filter",
            "default"} <= set(rows)
    for name, row in rows.items():
        for direction in ("v2p", "p2v"):
            assert {f"{direction}_R@{k}" for k in (1, 5, 10)} | {f"{direction}_MdR"} <= row["metrics"].keys(), name
    # The product default and the plain mean-pooling row rank the true item of the 12 test queries far
    # better than a random model (mean rank 4.08 or better: probability under 1 % for a random model).
    for name in ("default", "mean"):
        for direction in ("v2p", "p2v"):
            mean_rank = rows[name]["metrics"][f"{direction}_MnR"]
            assert_rank_sum_beats_chance([mean_rank] * 12, 12, f"{name} {direction}")
    for name in ("mean", "salient", "prototypes", "single-frame"):
        assert rows[name]["train_s"] > 0 and "shuffled" in rows[name]
        assert {"text", "short"} == set(rows[name]["t2v"])
    assert rows["rerank-text-50"]["latency_ms"]["50"] > 0 and rows["rerank-text-200"]["latency_ms"]["200"] > 0
    diag = results["diagnostics"]
    share = diag["salient"]["share"]["learned scorer"]
    assert 0 <= share["kept_share"] <= 100 and 0 < share["base_rate"] < 100
    assert set(diag["category_accuracy"]) == {"upper", "middle", "lower"}
    assert diag["patch_dropout"]["step_s_with"] > 0

    text = doc.read_text()
    assert "python -m ml.evaluation.ablation --data" in text and "Machine:" in text and "product default" in text
