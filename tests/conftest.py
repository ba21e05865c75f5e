"""Shared test fixtures: tiny local HF model folders (no downloads) and quiet logs."""

from __future__ import annotations

import os
from pathlib import Path

# No network in tests: set before huggingface_hub is imported (it reads this once).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Tiny models: intra-op threads only add wake-up latency (measured 14x slower decode steps with 2 threads on a
# loaded 2-core machine); subprocesses started by tests inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from tests.tiny_models import write_tiny_model_dir


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_export_cache(tmp_path_factory):
    """One export cache for the session, never the user's home: identical tiny models export once (hits in later
    tests, also in the `ad` subprocesses the CLI and multi-rank tests start, which inherit the variable); the
    export-cache tests give each test its own folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AD_CACHE_DIR", str(tmp_path_factory.mktemp("ad-cache-session")))
        yield


@pytest.fixture(autouse=True)
def _quiet_logs(monkeypatch):
    monkeypatch.setenv("AUTO_DEPLOY_LOG_LEVEL", "WARNING")
    monkeypatch.delenv("AD_DUMP_GRAPHS_DIR", raising=False)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """tiny_dir(family, **config_overrides) -> a local HF folder (config + byte tokenizer), cached per session."""
    cache: dict[tuple, Path] = {}

    def make(family: str, **overrides) -> Path:
        key = (family, repr(sorted(overrides.items())))  # repr: overrides may hold dicts (rope_scaling)
        if key not in cache:
            path = tmp_path_factory.mktemp(f"tiny_{family}")
            cache[key] = write_tiny_model_dir(path, family, **overrides)
        return cache[key]

    return make


@pytest.fixture
def scratch_transforms():
    """register(name, cls): register throwaway transforms for one test; the registry is restored afterwards."""
    from autodeploy_cli.pipeline import registry

    registry.discover()
    before = dict(registry._REGISTRY)
    yield lambda name, cls: registry.register(name)(cls)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
