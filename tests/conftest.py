"""Shared test fixtures."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real datasets folder: $SEQJAX_DATA_DIR, else <repo>/../shared/data.

    Missing data fails the test under CI (integration tests must run there) and skips it elsewhere.
    """
    path = Path(os.environ.get("SEQJAX_DATA_DIR") or REPO.parent / "shared" / "data")
    if not path.is_dir():
        missing_shared_data(f"shared data folder not found at {path} (set SEQJAX_DATA_DIR)")
    return path


def missing_shared_data(message: str) -> None:
    """Fails under CI (integration tests must run there), skips elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


TINY_OVERRIDES = [
    "data.max_len=20", "data.batch_size=32", "data.eval_batch_size=64", "data.buckets=[20]",
    "model.sasrec.dim=16", "model.sasrec.blocks=1", "train.epochs=3", "train.patience=0",
    "train.log_every_steps=2", "optim.warmup_steps=5", "optim.lr=0.005",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared synthetic shop log: 240 users, leave-one-out (shared by the training tests)."""
    from seqjax.data.prepare import PrepareConfig, prepare
    from seqjax.data.synthetic import generate_log
    root = tmp_path_factory.mktemp("tiny")
    log = root / "log.csv"
    generate_log(log, num_users=240, num_items=300, num_categories=10, seed=0, mean_events=25.0)
    prepare(PrepareConfig(format="generic", inputs=(str(log),), out=str(root / "data"),
                          max_timestamp="2100-01-01"), echo=False)
    return root / "data"


def tiny_config(data_dir: Path, *extra: str):
    from seqjax import config as config_lib
    from seqjax.train.config import ExperimentConfig
    return config_lib.load(ExperimentConfig, REPO / "configs" / "sasrec_tiny.yaml",
                           [f"data.path={data_dir}", *TINY_OVERRIDES, *extra])
