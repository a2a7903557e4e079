"""Shared fixtures: the JPEG replica of CIFAR-10 (real-data tests) and synthetic data (unit tests).

The replica comes from HLB_DATA only (a fresh clone without it runs the fast suite).
Without it, real-data tests are skipped, except under CI (env CI set), where a missing replica
is an error: a CI run that silently skipped them would prove nothing. Its decoded cache goes to
HLB_CACHE (default ~/.cache/hlb_utils), since the shared data folder is read-only in CI.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hlb_utils import data

from synthetic import synthetic_dataset

# A notebook's check of a learner's sketch reports and goes on; under the tests (and the notebook kernels
# they start, which inherit this environment) it raises, so that an unchanged sketch that no longer
# equals the library fails them (hlb_utils/check.py).
os.environ.setdefault("HLB_STRICT_CHECKS", "1")


def pytest_addoption(parser):
    parser.addoption("--data-only", action="store_true",
                     help="run only the real-data tests (those that use the `replica` fixture): CI runs "
                          "the rest first, without HLB_DATA, and need not run them twice")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--data-only"):
        return
    keep = [item for item in items if "replica" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


@pytest.fixture(autouse=True)
def torch_config_as_found():
    """Every test leaves dynamo's global config as it found it (the library raises its recompile
    budget when it compiles; a test that patches an entry must not leave it changed or deleted)."""
    config = torch._dynamo.config
    saved = config.save_config()
    yield
    config.load_config(saved)


@pytest.fixture(scope="session")
def replica() -> Path:
    """Path of the CIFAR-10 source for real-data tests (skips, or fails under CI, when missing)."""
    value = os.environ.get("HLB_DATA", "")
    path = Path(value).expanduser()
    if value and path.exists():
        return path
    # The variable comes first: pytest's summary line (-ra) cuts long reasons at the terminal's width.
    where = f"; nothing at {path}" if value else ""
    message = ("set HLB_DATA to run this real-data test (a CIFAR-10 source, e.g. the JPEG copy "
               f"cifar10-jpeg.tar.gz){where}")
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
