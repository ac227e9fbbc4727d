"""Training: the loss falls, the step compiles once per shape, resume is exact, bad states are refused."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO, TINY_OVERRIDES, tiny_config

from seqjax.config import ConfigError
from seqjax.evaluation.evaluate import evaluate
from seqjax.train.checkpoint import CheckpointStore
from seqjax.train.loop import Trainer, TrainingDiverged, train
from seqjax.train.run_dir import RunDirError


def _params(workdir: Path, step="latest"):
    store = CheckpointStore(workdir / "checkpoints")
    step, state, meta = store.restore(None, step=step)
    return step, jax.tree.map(np.asarray, state["params"]), meta


def _losses(workdir: Path, tag: str = "train/loss") -> dict[int, float]:
    """step -> value of a TensorBoard scalar, as TensorBoard reads it (restarts purge later steps)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(workdir / "tensorboard"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_loss_falls_and_validation_beats_chance(tiny_data, tmp_path):
    summary = train(tiny_config(tiny_data, "train.epochs=6"), tmp_path)
    losses = _losses(tmp_path)
    steps = sorted(losses)
    assert losses[steps[-1]] < losses[steps[0]] - 0.5
    # 300 items, full ranking: chance NDCG@10 is ~0.01.
    assert summary["best_valid"]["NDCG@10"] > 0.05
    assert summary["epochs"] == 6 and summary["stopped"].startswith("reached train.epochs")


def test_step_compiles_once_per_bucket(tiny_data, tmp_path):
    trainer = Trainer(tiny_config(tiny_data, "data.buckets=[8,20]", "train.epochs=2"), tmp_path)
    trainer.run()
    assert trainer.step_fn.compiled_shapes() == 2  # two padded lengths, nothing recompiled across epochs


def _train_cmd(data: Path, workdir: Path, *extra: str) -> list[str]:
    sets = [f"data.path={data}", *TINY_OVERRIDES, "train.epochs=4", "train.checkpoint_every_steps=2", *extra]
    return [sys.executable, "-m", "seqjax.cli", "train", "--config", str(REPO / "configs" / "sasrec_tiny.yaml"),
            "--workdir", str(workdir), *sum([["--set", s] for s in sets], [])]


def test_sigkill_then_rerun_is_bit_identical(tiny_data, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(_train_cmd(tiny_data, clean), check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd(tiny_data, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Kill once a mid-run checkpoint exists, at a moment unrelated to any save.
    while time.time() < deadline and not any(p.name.isdigit() and int(p.name) >= 10
                                              for p in (killed / "checkpoints").glob("*")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    out = subprocess.run(_train_cmd(tiny_data, killed), check=True, capture_output=True, text=True)
    assert "resuming from checkpoint step" in out.stdout
    step_a, params_a, meta_a = _params(clean)
    step_b, params_b, meta_b = _params(killed)
    assert step_a == step_b
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_array_equal(a, b)
    assert meta_a["progress"]["best_metric"] == meta_b["progress"]["best_metric"]
    assert json.loads((clean / "summary.json").read_text())["best_valid"] == \
        json.loads((killed / "summary.json").read_text())["best_valid"]
    for tag in ("train/loss", "valid/NDCG@10"):  # the curves too, the checkpoint's own step included
        assert _losses(killed, tag) == _losses(clean, tag), tag
    again = subprocess.run(_train_cmd(tiny_data, killed), check=True, capture_output=True, text=True)
    assert "already finished" in again.stdout


def test_corrupted_latest_checkpoint_falls_back(tiny_data, tmp_path, capsys):
    cfg = tiny_config(tiny_data, "train.epochs=2", "train.checkpoint_every_steps=2")
    train(cfg, tmp_path)
    store = CheckpointStore(tmp_path / "checkpoints")
    latest = max(store.all_steps())
    victim = max((p for p in (tmp_path / "checkpoints" / str(latest)).rglob("*") if p.is_file()
                  and p.name != "seqjax_manifest.json"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated
    # evaluate --checkpoint latest passes over it too, to the newest intact step
    card = evaluate(tmp_path, "valid", "latest")["protocol"]["checkpoint"]
    assert card["step"] == max(s for s in store.all_steps() if s != latest) < latest
    more = tiny_config(tiny_data, "train.epochs=3", "train.checkpoint_every_steps=2")
    trainer = Trainer(more, tmp_path, allow_config_change=True)
    _, progress, resumed = trainer._restore()
    assert resumed
    err = capsys.readouterr()
    assert f"checkpoint step {latest} is corrupted" in err.out + err.err
    summary = trainer.run()
    assert summary["epochs"] == 3


def test_changed_config_is_refused_with_the_key(tiny_data, tmp_path):
    train(tiny_config(tiny_data, "train.epochs=1"), tmp_path)
    with pytest.raises(RunDirError, match="optim.lr"):
        Trainer(tiny_config(tiny_data, "train.epochs=1", "optim.lr=0.1"), tmp_path)
    res = subprocess.run(_train_cmd(tiny_data, tmp_path, "train.epochs=1", "optim.lr=0.1"),
                         capture_output=True, text=True)
    assert res.returncode == 2 and "changed: " in res.stderr and "Traceback" not in res.stderr


def test_nonfinite_loss_stops_naming_the_step_and_keeps_last_good(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "train.epochs=3", "optim.lr=1e30", "optim.clip_norm=0.0",
                      "optim.warmup_steps=1", "train.checkpoint_every_steps=1")
    with pytest.raises(TrainingDiverged, match=r"non-finite loss or gradient at step \d+") as err:
        train(cfg, tmp_path)
    steps = CheckpointStore(tmp_path / "checkpoints").all_steps()
    for step in steps:  # every kept checkpoint holds finite parameters
        _, params, _ = _params(tmp_path, step)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    assert f"last good checkpoint: step {max(steps) if steps else None}" in str(err.value)


def test_tied_validation_keeps_the_later_step_as_the_checkpoint_store_does(tiny_data, tmp_path, monkeypatch):
    # Every epoch validates to the same value: the summary's best step must be the one `--checkpoint best`
    # restores (Orbax keeps the later of equal metrics), while patience still counts no gain.
    monkeypatch.setattr(Trainer, "validate", lambda self, params: {"NDCG@10": 0.25, "HR@10": 0.5, "count": 10})
    summary = train(tiny_config(tiny_data, "train.epochs=4", "train.patience=2"), tmp_path)
    store_best = CheckpointStore(tmp_path / "checkpoints").best_step()
    assert summary["best_step"] == store_best and summary["best_epoch"] == 3
    assert summary["stopped"].startswith("early stop") and summary["epochs"] == 3  # 2 and 3: no gain


def test_evaluate_refuses_other_data(tiny_data, tmp_path):
    from seqjax.evaluation.evaluate import evaluate
    train(tiny_config(tiny_data, "train.epochs=1"), tmp_path)
    result = evaluate(tmp_path, "test", "best", tmp_path / "t.json")
    assert set(result["metrics"]) >= {"NDCG@10", "HR@10", "MRR", "HR@1", "NDCG@20"}
    card = result["protocol"]
    assert card["checkpoint"]["chosen"].startswith("best validation") and card["users"] == 240
    assert (tmp_path / "t.per_user.csv").read_text().count("\n") == 241
    data_json = json.loads((tmp_path / "data.json").read_text())
    (tmp_path / "data.json").write_text(json.dumps({**data_json, "checksum": "0" * 64}))
    with pytest.raises(RunDirError, match="checksum"):
        evaluate(tmp_path, "test")


@pytest.mark.parametrize("kind", ["pop", "markov", "itemknn"])
def test_count_models_train_and_evaluate_with_the_same_card(kind, tiny_data, tmp_path):
    from seqjax.evaluation.evaluate import evaluate
    summary = train(tiny_config(tiny_data, f"model.kind={kind}"), tmp_path)
    # the fitted artefact, loaded again by evaluate, scores valid as training reported
    valid = evaluate(tmp_path, "valid", "best")["metrics"]
    assert valid["NDCG@10"] == pytest.approx(summary["best_valid"]["NDCG@10"], rel=1e-6) and valid["NDCG@10"] > 0.0
    result = evaluate(tmp_path, "test", "best", tmp_path / "t.json")
    card = result["protocol"]
    assert card["model"] == kind and card["users"] == 240 and card["checkpoint"]["chosen"].startswith("count-based")
    again = train(tiny_config(tiny_data, f"model.kind={kind}"), tmp_path)
    assert again == summary  # a fitted run is not fitted again


def test_attention_setting_on_a_model_without_attention_warns(tiny_data):
    with pytest.warns(UserWarning, match="model.attention=xla is ignored"):
        tiny_config(tiny_data, "model.kind=pop", "model.attention=xla")


NEURAL_KIND_OVERRIDES = {"gru4rec": [], "lstm": [], "bert4rec": ["model.bert4rec.dim=16", "model.bert4rec.blocks=1"],
                         "hstu": ["model.hstu.dim=16", "model.hstu.blocks=1"]}


@pytest.mark.parametrize("kind", sorted(NEURAL_KIND_OVERRIDES))
def test_neural_kinds_train_through_the_same_loop_and_resume_exactly(kind, tiny_data, tmp_path):
    """Two epochs at once, and one epoch then a resumed second (BERT4Rec: masks drawn again from
    (seed, epoch, batch)), end with identical parameters."""
    from seqjax.evaluation.evaluate import evaluate
    sets = [f"model.kind={kind}", *NEURAL_KIND_OVERRIDES[kind]]
    summary = train(tiny_config(tiny_data, *sets, "train.epochs=2"), tmp_path / "straight")
    assert summary["epochs"] == 2 and summary["best_valid"]["NDCG@10"] > 0.0
    valid = evaluate(tmp_path / "straight", "valid", "best")["metrics"]  # the chosen checkpoint, reloaded
    assert valid["NDCG@10"] == pytest.approx(summary["best_valid"]["NDCG@10"], rel=1e-6)
    assert evaluate(tmp_path / "straight", "test")["protocol"]["model"] == kind
    train(tiny_config(tiny_data, *sets, "train.epochs=1"), tmp_path / "resumed")
    train(tiny_config(tiny_data, *sets, "train.epochs=2"), tmp_path / "resumed", allow_config_change=True)
    for a, b in zip(jax.tree.leaves(_params(tmp_path / "straight")[1]),
                    jax.tree.leaves(_params(tmp_path / "resumed")[1]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_blockwise_attention_trains_like_reference(tiny_data, tmp_path):
    from seqjax.train.step import put_batch
    losses = {}
    for impl in ("reference", "blockwise"):
        trainer = Trainer(tiny_config(tiny_data, f"model.attention={impl}", "model.sasrec.heads=2"), tmp_path / impl)
        state = trainer._create()
        out = []
        for batch, _ in zip(trainer.batches.epoch(0), range(3)):
            state, metrics = trainer.step_fn(state, put_batch(batch, trainer.mesh))
            out.append(float(metrics["loss"]))
        losses[impl] = out
    np.testing.assert_allclose(losses["blockwise"], losses["reference"], rtol=1e-5)


def test_config_keys_added_by_a_newer_version_do_not_block_resume(tiny_data, tmp_path):
    import yaml
    train(tiny_config(tiny_data, "train.epochs=1"), tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["model"]["lstm"]  # as written by a version that had no LSTM section
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert train(tiny_config(tiny_data, "train.epochs=1"), tmp_path)["epochs"] == 1


@pytest.mark.parametrize("loss", [["train.loss.kind=sampled", "train.loss.sampler=popularity",
                                   "train.loss.num_negatives=64"],
                                  ["train.loss.kind=in_batch"],
                                  ["train.loss.kind=gbce", "train.loss.num_negatives=32"]])
def test_large_catalogue_losses_train_through_the_same_step(loss, tiny_data, tmp_path):
    # Sampled losses are not comparable across batches (their candidates differ), so the check is
    # on ranking: 300 items, full ranking, chance NDCG@10 ~0.01.
    summary = train(tiny_config(tiny_data, "train.epochs=3", *loss), tmp_path)
    assert summary["best_valid"]["NDCG@10"] > 0.05


@pytest.mark.parametrize("extra", [["data.pack=true"], ["model.kind=bert4rec"]])
def test_own_items_left_out_of_the_softmax_train_through_the_same_step(extra, tiny_data, tmp_path):
    # Packed rows (segments) and BERT4Rec's mask token reach the loss's own-items mask through the step.
    cfg = tiny_config(tiny_data, "train.epochs=3", "train.loss.exclude_own_items=true", *extra)
    assert train(cfg, tmp_path)["best_valid"]["NDCG@10"] > 0.05  # chance ~0.01 over 300 items
    with pytest.raises(ConfigError, match="train.loss.exclude_own_items=true needs train.loss.kind=full"):
        tiny_config(tiny_data, "train.loss.exclude_own_items=true", "train.loss.kind=gbce")


def test_all_history_windows_train_through_the_same_loop(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, "train.epochs=3", "data.train_history=all", "data.pack=true")
    recent = Trainer(tiny_config(tiny_data, "data.pack=true"), tmp_path / "recent").steps_per_epoch
    summary = train(cfg, tmp_path / "all")
    assert Trainer(cfg, tmp_path / "all").steps_per_epoch > recent
    assert summary["best_valid"]["NDCG@10"] > 0.05  # chance ~0.01 over 300 items
    with pytest.raises(ConfigError, match="data.train_history=all shapes next-item training examples; task=purchase"):
        tiny_config(tiny_data, "task=purchase", "data.train_history=all")


def test_max_steps_on_an_epoch_end_is_finished_on_rerun(tiny_data, tmp_path, capsys):
    # The epoch-end checkpoint is the max_steps step, saved before the stop was known: a rerun must say the run
    # is finished, not restore it as unfinished and stop again.
    n = Trainer(tiny_config(tiny_data), tmp_path / "probe").steps_per_epoch
    cfg = tiny_config(tiny_data, f"train.max_steps={n}")
    assert train(cfg, tmp_path / "run")["stopped"] == f"reached train.max_steps={n}"
    capsys.readouterr()
    assert train(cfg, tmp_path / "run")["stopped"] == f"reached train.max_steps={n}"
    assert "already finished (reached train.max_steps=" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec", "hstu", "gru4rec"])
def test_length_bucketed_evaluation_ranks_as_full_width(kind, tiny_data):
    # Evaluation batches go shortest first, padded to the smallest bucket that fits: every user's score and
    # rank must be those of batches padded to max_len.
    from flax import nnx

    from seqjax.data.pipeline import records
    from seqjax.evaluation.scoring import make_rank_fn, neural_ranker, rank_split
    from seqjax.sharding import make_mesh
    from seqjax.train.step import build_model
    cfg = tiny_config(tiny_data, f"model.kind={kind}", "data.max_len=20")
    num_items = json.loads((tiny_data / "metadata.json").read_text())["num_items"]
    graphdef, params = nnx.split(build_model(cfg, num_items=num_items, seed=0))
    times = kind == "hstu"  # HSTU with its relative time bias: timestamps padded to the bucket too
    ranker = neural_ranker(make_rank_fn(graphdef, make_mesh(1), filter_seen=True, use_timestamps=times), params)
    full = rank_split(ranker, tiny_data, "test", 64, 20, buckets=(20,))
    bucketed = rank_split(ranker, tiny_data, "test", 64, 20, buckets=(4, 8, 12, 16, 20))
    in_record_order = [r.user for r in records(tiny_data, "test")]
    assert bucketed["users"].tolist() == full["users"].tolist() == in_record_order
    np.testing.assert_allclose(bucketed["scores"], full["scores"], rtol=1e-5, atol=1e-6)  # float32 sums
    np.testing.assert_array_equal(bucketed["ranks"], full["ranks"])
