"""The benchmark command end to end on the tiny dataset: every row, report, plots, results, feature cache."""
from __future__ import annotations

import json

import pytest

from ml.evaluation.benchmark import FEATURE_ROWS, VARIANTS, main
from tests.chance import assert_rank_sum_beats_chance

FAST = ["--epochs", "2", "--batch-size", "8", "--queue-size", "8", "--tower-steps", "3", "--tower-batch", "8",
        "--frames-per-video", "4", "--no-progress"]
TEST_PRODUCTS = 12  # benchmark_data (conftest): 12 test products, one video each


@pytest.fixture(scope="module")
def report(benchmark_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-report")
    main(["--data", str(benchmark_data), "--out", str(out), *FAST])
    return out


def test_report_has_every_row_both_directions_and_the_plots(report):
    results = json.loads((report / "results.json").read_text())
    rows = results["rows"]
    assert set(rows) == {"chance", *FEATURE_ROWS, *VARIANTS}
    assert rows["chance"]["test"]["v2p_R@1"] == pytest.approx(100 / TEST_PRODUCTS)
    for name, row in rows.items():
        for direction in ("v2p", "p2v"):
            assert {f"{direction}_{m}" for m in ("R@1", "R@5", "R@10", "MdR", "MnR")} <= row["test"].keys()
            assert 1 <= row["test"][f"{direction}_MdR"] <= TEST_PRODUCTS
        if name != "chance":
            assert row["test_by_upper"] and all(u in ("clothes", "cosmetics", "supplies", "furniture", "entertainment",
                                                      "food") for u in row["test_by_upper"])
    for name in VARIANTS:
        assert len(rows[name]["val_per_epoch"]) == 2 and rows[name]["step_loss"]
        assert (report / "runs" / name / "best.pt").exists()
    assert rows["mqmc"]["negatives"] == 30 * 8 and rows["moco"]["negatives"] == 8
    assert rows["mqmc-beta0"]["config"]["loss"]["beta"] == 0 and rows["mqmc"]["config"]["loss"]["beta"] == 0.1
    assert rows["mqmc-no-weighting"]["config"]["mqmc"]["reweight_negatives"] is False

    text = (report / "report.md").read_text()
    for row in rows.values():
        assert row["label"] in text
    assert "python -m ml.evaluation.benchmark --data" in text and "Machine:" in text
    for plot in ("loss.png", "val_recall.png", "upper_recall.png"):
        assert (report / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({plot})" in text


def test_towers_with_the_feature_shortcut_retrieve_well_above_chance(report):
    """The rows `build_model`'s configuration trains (towers on the encoder features' similarity) rank the
    true item of the 12 test queries far better than a random model, in both directions: a mean rank of
    4.08 or better, which a random model reaches with probability under 1 %. A training that wrecks the
    towers (weights diverged or zeroed) falls to chance here."""
    rows = json.loads((report / "results.json").read_text())["rows"]
    for name in ("mqmc-shortcut", "infonce-shortcut"):
        for direction in ("v2p", "p2v"):
            mean_rank = rows[name]["test"][f"{direction}_MnR"]
            assert_rank_sum_beats_chance([mean_rank] * TEST_PRODUCTS, TEST_PRODUCTS, f"{name} {direction}")


def test_rerun_loads_features_from_the_cache(benchmark_data, report, tmp_path):
    main(["--data", str(benchmark_data), "--out", str(tmp_path), "--methods", "infonce", *FAST])
    setup = json.loads((tmp_path / "results.json").read_text())["setup"]
    assert any(k.startswith("(cached)") for k in setup["timings"])
    assert "loaded from the feature cache" in " ".join(setup["data"])
    first = json.loads((report / "results.json").read_text())["rows"]["visual-features"]["test"]
    again = json.loads((tmp_path / "results.json").read_text())["rows"]["visual-features"]["test"]
    assert again == first  # the same features


def test_unknown_method_is_refused(benchmark_data, tmp_path):
    with pytest.raises(SystemExit):
        main(["--data", str(benchmark_data), "--out", str(tmp_path), "--methods", "nope"])


def test_rerun_into_the_same_folder_trains_only_changed_rows(benchmark_data, report, tmp_path):
    import shutil

    out = tmp_path / "report"
    shutil.copytree(report, out)
    stamp = {n: (out / "runs" / n / "best.pt").stat().st_mtime_ns for n in ("infonce", "moco")}
    main(["--data", str(benchmark_data), "--out", str(out), "--methods", "infonce", "moco", *FAST])
    assert {n: (out / "runs" / n / "best.pt").stat().st_mtime_ns for n in stamp} == stamp  # reused
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows["infonce"]["seconds"]["train"] > 0 and rows["infonce"]["best_epoch"] >= 1
    main(["--data", str(benchmark_data), "--out", str(out), "--methods", "infonce", *FAST[:-1], "--seed", "1", "--no-progress"])
    assert (out / "runs" / "infonce" / "best.pt").stat().st_mtime_ns != stamp["infonce"]  # changed config: trained


def test_an_interrupted_retrain_is_not_taken_for_a_finished_run(benchmark_data, report, tmp_path, monkeypatch):
    import shutil

    import ml.training.train_instance

    out = tmp_path / "report"
    shutil.copytree(report, out)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ml.training.train_instance, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["--data", str(benchmark_data), "--out", str(out), "--methods", "infonce", *FAST[:-1], "--seed", "1",
              "--no-progress"])
    assert not (out / "runs" / "infonce" / "done.json").exists()
