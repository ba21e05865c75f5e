"""Fixtures for `ad bench` tests: a fake engine in place of ours, and the real CLI writing a JSON result."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from autodeploy_cli.bench import ours
from autodeploy_cli.cli import app
from tests.bench.fake_engine import FakeEngine, FakeSampling

SMALL = ["--isl", "16", "--osl", "8", "--num-requests", "4"]


@pytest.fixture
def fake(monkeypatch):
    """fake(**kwargs) installs a FakeEngine as our engine (no build) and returns it."""

    def install(**kwargs) -> FakeEngine:
        engine = FakeEngine(**kwargs)
        monkeypatch.setattr(ours, "make_engine", lambda cfg: engine)
        monkeypatch.setattr(ours, "sampling_params", lambda n: FakeSampling(n))
        return engine

    return install


@pytest.fixture
def bench(tmp_path):
    """bench(*args) runs `ad bench *args --output <tmp>/bench[-N].json`; returns (CliRunner result, JSON or None)."""
    runs = itertools.count()

    def invoke(*args: str):
        n = next(runs)  # a fresh file per call: an existing one is kept and the result goes to a numbered name
        out = tmp_path / ("bench.json" if n == 0 else f"bench-{n}.json")
        result = CliRunner().invoke(app, ["bench", *args, "--output", str(out)], env={"COLUMNS": "160"})  # no wrap
        return result, (json.loads(out.read_text()) if out.exists() else None)

    return invoke
