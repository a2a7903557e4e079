"""Shared fixtures: the JPEG replica of CIFAR-10 (real-data tests) and synthetic data (unit tests).

The replica comes from HLB_DATA, else ../shared/data/cifar10-jpeg.tar.gz next to the repository.
Without it, real-data tests are skipped, except under CI (env CI set), where a missing replica
is an error: a CI run that silently skipped them would prove nothing. Its decoded cache goes to
HLB_CACHE (default ~/.cache/hlb_utils), since the shared data folder is read-only in CI.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hlb_utils import data

from synthetic import synthetic_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPLICA = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def replica() -> Path:
    """Path of the CIFAR-10 source for real-data tests (skips, or fails under CI, when missing)."""
    path = Path(os.environ.get("HLB_DATA") or DEFAULT_REPLICA).expanduser()
    if path.exists():
        return path
    # The variable comes first: pytest's summary line (-ra) cuts long reasons at the terminal's width.
    message = (f"set HLB_DATA to run this real-data test (the JPEG replica cifar10-jpeg.tar.gz or "
               f"another CIFAR-10 source); nothing at {path}")
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so real-data tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def cifar(replica: Path) -> data.Cifar10:
    """The whole dataset, decoded once per machine (cached in HLB_CACHE or ~/.cache/hlb_utils)."""
    return data.load_cifar10(replica, verbose=False)


@pytest.fixture(scope="session")
def synthetic() -> data.Cifar10:
    """1,000 + 200 tiny learnable images: for tests that need data but no files."""
    return synthetic_dataset(n_train=1000, n_test=200, seed=0)
