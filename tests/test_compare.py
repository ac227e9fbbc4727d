"""`seqjax compare`: paired differences of two next-item evaluations, refused across protocols."""

import json

import numpy as np
import pytest

from seqjax.cli import main
from seqjax.evaluation.compare import compare
from seqjax.evaluation.ranking import ranking_metrics

NUM_ITEMS = 50


def _write(path, ranks, **protocol_changes):
    users = np.arange(len(ranks))
    metrics = {k: v for k, v in ranking_metrics(np.asarray(ranks), NUM_ITEMS).items() if k != "count"}
    protocol = {"dataset": {"checksum": "abc", "num_items": NUM_ITEMS}, "split": {"evaluated": "test"},
                "candidates": "full", "filter_seen": {"applied": True}}
    for key, value in protocol_changes.items():
        protocol[key] = value
    path.write_text(json.dumps({"metrics": metrics, "protocol": protocol}))
    rows = "".join(f"{u},1,{r},0.0\n" for u, r in zip(users, ranks))
    path.with_suffix(".per_user.csv").write_text("user,target,rank,score\n" + rows)
    return path


def test_paired_difference_is_the_difference_of_per_user_metrics(tmp_path):
    rng = np.random.default_rng(0)
    ranks_a = rng.integers(1, NUM_ITEMS + 2, 400)  # NUM_ITEMS + 1 is the miss sentinel
    ranks_b = np.maximum(ranks_a - rng.integers(0, 4, 400), 1)  # B ranks every target as high or higher
    a, b = _write(tmp_path / "a.json", ranks_a), _write(tmp_path / "b.json", ranks_b)
    out = compare(a, b, ("NDCG@10", "HR@5", "MRR"), resamples=500)
    ndcg = lambda r: np.where(r <= 10, 1 / np.log2(r + 1.0), 0.0)
    np.testing.assert_allclose(out["NDCG@10"]["diff"], (ndcg(ranks_b) - ndcg(ranks_a)).mean(), rtol=1e-12)
    mrr = lambda r: np.where(r <= NUM_ITEMS, 1.0 / r, 0.0)
    np.testing.assert_allclose(out["MRR"]["diff"], (mrr(ranks_b) - mrr(ranks_a)).mean(), rtol=1e-12)
    for name in ("NDCG@10", "HR@5", "MRR"):
        lo, hi = out[name]["ci"]
        assert 0 < lo <= out[name]["diff"] <= hi  # B is never worse per user, and better for some
    same = compare(a, a, ("NDCG@10",), resamples=50)
    assert same["NDCG@10"]["diff"] == 0 and same["NDCG@10"]["ci"] == [0.0, 0.0]
    # the seed is reported and changes only the interval
    other = compare(a, b, ("NDCG@10", "HR@5", "MRR"), resamples=500, seed=1)
    assert (out["seed"], other["seed"]) == (0, 1) and other["NDCG@10"]["diff"] == out["NDCG@10"]["diff"]
    assert other["NDCG@10"]["ci"] != out["NDCG@10"]["ci"]


def test_cli_prints_its_command_and_seed(tmp_path, capsys):
    rng = np.random.default_rng(1)
    a = _write(tmp_path / "a.json", rng.integers(1, NUM_ITEMS + 2, 50))
    b = _write(tmp_path / "b.json", rng.integers(1, NUM_ITEMS + 2, 50))
    assert main(["compare", str(a), str(b), "--resamples", "100", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert f"command: seqjax compare {a} {b} --metrics NDCG@10 HR@10 MRR --resamples 100 --seed 7" in out
    assert "(100 resamples, seed 7)" in out


def test_different_protocols_users_or_stale_csvs_are_refused(tmp_path, capsys):
    ranks = np.arange(1, 21)
    a = _write(tmp_path / "a.json", ranks)
    other = _write(tmp_path / "b.json", ranks, filter_seen={"applied": False})
    with pytest.raises(ValueError, match="filter_seen.applied"):
        compare(a, other)
    assert main(["compare", str(a), str(other)]) == 2  # the CLI refuses in one line, no traceback
    assert capsys.readouterr().err.startswith("error: ")
    fewer = _write(tmp_path / "c.json", ranks[:10])
    with pytest.raises(ValueError, match="different users"):
        compare(a, fewer)
    stale = _write(tmp_path / "d.json", ranks)
    stale.with_suffix(".per_user.csv").write_text("user,target,rank,score\n" + "".join(
        f"{u},1,1,0.0\n" for u in range(20)))
    with pytest.raises(ValueError, match="another evaluation"):
        compare(a, stale)
    (tmp_path / "e.json").write_text(a.read_text())
    with pytest.raises(FileNotFoundError, match="e.per_user.csv"):
        compare(a, tmp_path / "e.json")
