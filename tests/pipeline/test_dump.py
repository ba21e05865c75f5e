"""Graph dumps: one file per pipeline entry in order, node lines with shapes/dtypes, safe directory handling."""

from __future__ import annotations

import re

import pytest

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.pipeline.dump import prepare_dump_dir
from autodeploy_cli.pipeline.registry import ordered_entries


def test_one_file_per_entry_disabled_ones_too(tmp_path, monkeypatch):
    out = tmp_path / "graphs"
    monkeypatch.setenv("AD_DUMP_GRAPHS_DIR", str(out))
    cfg = resolve([], ["transforms.cleanup_noop_add.enabled=false"])
    build(cfg)
    entries = ordered_entries(cfg.transforms)
    expected = [f"{i:03d}_{opts.stage}_{name}.txt" for i, (name, opts) in enumerate(entries, start=1)]
    assert sorted(p.name for p in out.glob("*.txt")) == expected
    disabled = (out / next(e for e in expected if "cleanup_noop_add" in e)).read_text()
    assert "# Status: disabled" in disabled
    exported = (out / expected[1]).read_text()
    # placeholders and calls carry shape : dtype, symbolic dims printed as symbols
    assert re.search(r"^%input_ids : s\w+xs\w+ : torch.int64$", exported, re.M)
    assert re.search(r"^%\w+ = aten\.embedding\(%\w+, %input_ids(, 0)?\) : s\w+xs\w+x128 : torch.float32$", exported, re.M)
    assert "auto_deploy.torch_attention(" in exported


def test_refuses_non_empty_dir_it_did_not_create(tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("do not lose me")
    with pytest.raises(ADError, match="is not empty and was not created by `ad`"):
        prepare_dump_dir(precious)
    assert (precious / "notes.txt").read_text() == "do not lose me"
    prepare_dump_dir(precious, force=True)
    assert not (precious / "notes.txt").exists()


def test_reuses_its_own_dir(tmp_path):
    out = prepare_dump_dir(tmp_path / "g")
    (out / "001_old.txt").write_text("stale")
    prepare_dump_dir(out)  # created by ad: cleared without --force
    assert not (out / "001_old.txt").exists()
