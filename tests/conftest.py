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
        message = f"shared data folder not found at {path} (set SEQJAX_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
