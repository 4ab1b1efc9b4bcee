"""The index benchmark itself: its reference rows, recall, and the spread matched to real embeddings."""
import numpy as np

from matching import bench_index


def test_spread_like_recovers_the_spread_of_rows_drawn_with_it():
    for spread in (0.5, 2.0):
        rows, _ = bench_index.clustered(2000, 1, 64, 20, seed=3, spread=spread)
        found, contrast = bench_index.spread_like(rows, seed=4)
        assert abs(found - spread) / spread < 0.2, (spread, found)
        assert contrast > 1.0


def test_contrast_falls_as_clusters_overlap():
    tight, _ = bench_index.clustered(2000, 1, 64, 20, seed=0, spread=0.3)
    loose, _ = bench_index.clustered(2000, 1, 64, 20, seed=0, spread=4.0)
    assert bench_index.neighbour_contrast(tight) > 2 * bench_index.neighbour_contrast(loose)


def test_small_run_gives_exact_rows_and_a_markdown_table(tmp_path, capsys):
    np.save(tmp_path / "real.npy", bench_index.clustered(1500, 1, 32, 15, seed=1, spread=1.0)[0])
    results = bench_index.main(["--rows", "2000", "--queries", "10", "--backends", "numpy", "lite-flat",
                                "--like", str(tmp_path / "real.npy"), "--workdir", str(tmp_path / "w")])
    by_name = {r.backend.split()[0]: r for r in results}
    assert by_name["numpy"].recall_at_10 == 1.0
    assert by_name["milvus-lite"].recall_at_10 == 1.0  # FLAT is exact
    table = capsys.readouterr().out
    assert "| milvus-lite FLAT" in table and "neighbour contrast" in table and "32-d" in table
