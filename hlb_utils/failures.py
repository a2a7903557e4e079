"""A run that failed, as the run records keep it (`runs.py`) and a cluster reports it (`cluster.py`).

Its own small module so that both import it and neither imports the other in a circle;
`runs.FailedRun` is this same class.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import TrainConfig


@dataclass
class FailedRun:
    """A run that raised, or whose worker died more often than its retries allow: in the table, never
    in the statistics."""

    config: TrainConfig
    error: str
    host: str = ""
