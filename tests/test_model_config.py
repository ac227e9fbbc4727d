"""The model-kind contract: bad kinds, attention settings the hardware cannot run and wrongly typed
settings of inactive kinds fail at config load, with the reason, not inside jit."""

import dataclasses
import warnings
from pathlib import Path

import pytest

from seqjax import config as config_lib
from seqjax.cli import _is_sequence_task_config
from seqjax.train.config import ExperimentConfig, check_cudnn


def load(*overrides: str) -> ExperimentConfig:
    return config_lib.load(ExperimentConfig, None, list(overrides))


def with_cudnn(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with attention=cudnn, not validated: check_cudnn is then called with a chosen device."""
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention="cudnn"))


def test_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(config_lib.ConfigError, match=r"model.kind: 'transformer' is not one of \['sasrec'"):
        load("model.kind=transformer")


def test_inactive_kind_settings_are_type_checked():
    with pytest.raises(config_lib.ConfigError, match="model.gru4rec.dim: expected an integer"):
        load("model.kind=sasrec", "model.gru4rec.dim=wide")


def test_attention_is_ignored_with_a_warning_by_kinds_without_attention():
    with pytest.warns(UserWarning, match="model.attention=blockwise is ignored: model.kind=gru4rec"):
        load("model.kind=gru4rec", "model.attention=blockwise")


@pytest.mark.parametrize("override, message", [
    ("train.metric=NDCG@50", r"train.metric='NDCG@50': use MRR, or HR@K or NDCG@K with K in eval.ks=\[1, 5, 10, 20\]"),
    ("train.metric=NDCG", "train.metric='NDCG': use MRR"),
    ("train.loss_chunk=0", "train.loss_chunk=0 must be >= 1"),
    ("train.eval_every_epochs=0", "train.eval_every_epochs=0 must be >= 1"),
    ("train.log_every_steps=0", "train.log_every_steps=0 must be >= 1"),
    ("train.max_steps=-1", "train.max_steps=-1 must be >= 0"),
    ("train.num_devices=0", "train.num_devices=0 must be >= 1"),
])
def test_train_settings_that_would_fail_later_are_refused_at_load(override, message):
    # each used to pass load and fail after an epoch (KeyError) or inside jit (division by zero)
    with pytest.raises(config_lib.ConfigError, match=message):
        load(override)
    assert load("train.metric=NDCG@50", "eval.ks=[10,50]").train.metric == "NDCG@50"


@pytest.mark.parametrize("overrides, reason", [
    (("train.dtype=float32",), "needs train.dtype=bfloat16"),
    (("train.dtype=bfloat16", "model.sasrec.dim=50", "model.sasrec.heads=1"), "= 50 must be a multiple of 8"),
    (("train.dtype=bfloat16", "model.sasrec.dim=256", "model.sasrec.heads=1"), "at most 128 \\(256 on Hopper\\)"),
])
def test_cudnn_refuses_what_its_kernel_cannot_run(overrides, reason):
    cudnn = with_cudnn(load(*overrides))
    with pytest.raises(config_lib.ConfigError, match=reason):
        check_cudnn(cudnn, backend="gpu", compute_capability="8.0")


def test_cudnn_head_dim_256_is_allowed_on_hopper_only_and_never_on_cpu():
    cudnn = with_cudnn(load("train.dtype=bfloat16", "model.sasrec.dim=256", "model.sasrec.heads=1"))
    check_cudnn(cudnn, backend="gpu", compute_capability="9.0")  # H100/H200: accepted
    with pytest.raises(config_lib.ConfigError, match="needs an NVIDIA GPU; this process runs on cpu"):
        check_cudnn(cudnn, backend="cpu")


def test_cudnn_on_this_cpu_machine_fails_at_load():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(config_lib.ConfigError, match="model.attention=cudnn"):
            load("model.attention=cudnn", "train.dtype=bfloat16")


def test_hstu_refuses_attention_it_has_no_kernel_for():
    with pytest.raises(config_lib.ConfigError, match="model.kind=hstu uses pointwise SiLU attention"):
        check_cudnn(with_cudnn(load("model.kind=hstu", "train.dtype=bfloat16")), backend="gpu")
    with pytest.raises(config_lib.ConfigError, match="model.attention=xla: model.kind=hstu"):
        load("model.kind=hstu", "model.attention=xla")
    assert load("model.kind=hstu", "model.attention=blockwise").model.attention == "blockwise"


SHIPPED_CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


# Sequence-model purchase/churn configs are loaded in tests/test_binary_loop.py.
@pytest.mark.parametrize("path", [p for p in SHIPPED_CONFIGS if not _is_sequence_task_config(str(p))],
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_and_names_its_kind_in_the_file_name(path):
    cfg = config_lib.load(ExperimentConfig, path)
    assert cfg.model.kind in path.stem.split("_")
