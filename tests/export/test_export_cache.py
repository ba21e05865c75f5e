"""The on-disk export cache: a second build loads the exported graph (same graph, same outputs as HF), any change
to what determines the graph misses, and a damaged entry is rebuilt without an error."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.graph.core import retarget_device_kwargs
from autodeploy_cli.models.weights import assign_weights, source_tensors
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.pipeline.report import _timing_line

BASE = ["skip_loading_weights=true", "max_seq_len=128", "device=cpu", "dtype=float32"]


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path_factory):
    """Each test here starts from an empty cache (the rest of the suite shares one: tests/conftest.py)."""
    monkeypatch.setenv("AD_CACHE_DIR", str(tmp_path_factory.mktemp("ad-cache")))


def _export(tiny_dir, family="llama", *extra, stop="export_to_gm"):
    cfg = resolve([], [f"model={tiny_dir(family)}", *BASE, *extra])
    return build(cfg, stop_after=stop)


def _status(result) -> str:
    return result.report["export_cache"]["status"]


def _signature(gm) -> list:
    """Every node with its target, arguments and meta value shape/dtype: two equal signatures are one graph."""
    out = []
    for n in gm.graph.nodes:
        v = n.meta.get("val")
        val = (tuple(map(str, v.shape)), tuple(map(str, v.stride())), v.dtype) if isinstance(v, torch.Tensor) \
            else str(v)
        out.append((n.op, n.name, str(n.target), str(n.args), str(n.kwargs), val))
    return out


def _check_equals_hf(result) -> None:
    gm = result.model
    reference = result.ctx.factory.materialize(torch.device("cpu"))
    assign_weights(gm, source_tensors(reference))
    retarget_device_kwargs(gm, torch.device("cpu"))
    for batch, seq in ((2, 7), (1, 3)):
        ids = torch.randint(0, 320, (batch, seq), generator=torch.Generator().manual_seed(seq))
        pos = torch.arange(seq).expand(batch, seq)
        with torch.no_grad():
            want = reference(input_ids=ids, position_ids=pos, use_cache=False).logits
            torch.testing.assert_close(gm(ids, pos), want, rtol=1e-5, atol=1e-5)


# own attention code + meta-created constants (falcon), MoE (mixtral), the attention patch (llama)
@pytest.mark.parametrize("family", ["llama", "falcon", "mixtral"])
def test_second_build_loads_the_cached_graph(family, tiny_dir):
    first = _export(tiny_dir, family)
    second = _export(tiny_dir, family)
    assert (_status(first), _status(second)) == ("miss", "hit")
    assert "cache hit" in second.records[1].note
    assert "export cache hit" in _timing_line(second.report) and second.report["stage_time_s"]["export"] > 0
    assert second.ctx.facts.export_patches == first.ctx.facts.export_patches
    assert _signature(second.model) == _signature(first.model)
    assert second.model.code == first.model.code
    assert [n for n, _ in second.model.named_buffers()] == [n for n, _ in first.model.named_buffers()]
    _check_equals_hf(second)


def test_transforms_on_a_cached_graph_give_the_same_model(tiny_dir):
    """The pattern matchers and the weight load run on the loaded graph's meta values exactly as on export's."""
    first = _export(tiny_dir, "llama", stop="load_weights")
    second = _export(tiny_dir, "llama", stop="load_weights")
    assert (_status(first), _status(second)) == ("miss", "hit")
    assert [(r.name, r.num_matches) for r in second.records] == [(r.name, r.num_matches) for r in first.records]
    ids, pos = torch.randint(0, 320, (2, 6)), torch.arange(6).expand(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(second.model(ids, pos), first.model(ids, pos), rtol=0, atol=0)


@pytest.mark.parametrize("change", ["model_kwargs.num_hidden_layers=1", "model_kwargs.rms_norm_eps=0.001",
                                    "max_seq_len=64", "transforms.export_to_gm.patches.autocast_noop=false"])
def test_a_change_that_shapes_the_graph_misses(change, tiny_dir):
    assert _status(_export(tiny_dir)) == "miss"
    assert _status(_export(tiny_dir, "llama", change)) == "miss"
    assert _status(_export(tiny_dir, "llama", change)) == "hit"


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other_key"])
def test_a_damaged_entry_is_rebuilt(damage, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AD_CACHE_DIR", str(tmp_path))
    first = _export(tiny_dir)
    path = first.report["export_cache"]["path"]
    blob = open(path, "rb").read()
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":
        blob = blob[:-100] + bytes([blob[-100] ^ 0xFF]) + blob[-99:]
    elif damage == "garbage":
        blob = b"not a cache entry"
    else:  # a valid entry of another model under this key
        other = _export(tiny_dir, "llama", "model_kwargs.num_hidden_layers=1")
        blob = open(other.report["export_cache"]["path"], "rb").read()
    open(path, "wb").write(blob)
    rebuilt = _export(tiny_dir)
    assert _status(rebuilt) == "miss"
    assert _signature(rebuilt.model) == _signature(first.model)
    assert _status(_export(tiny_dir)) == "hit"  # written again


def test_cache_off_writes_nothing(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("AD_CACHE_DIR", str(tmp_path / "env"))
    result = _export(tiny_dir, "llama", "transforms.export_to_gm.cache=false")
    assert _status(result) == "off" and not (tmp_path / "env").exists()
    explicit = _export(tiny_dir, "llama", f"transforms.export_to_gm.cache_dir={tmp_path / 'opt'}")
    assert explicit.report["export_cache"]["path"].startswith(str(tmp_path / "opt"))


def test_a_graph_the_format_cannot_hold_is_exported_each_time(tiny_dir, monkeypatch):
    """Unknown contents are never cached half-right: the build says why and exports again next time."""
    from autodeploy_cli.export import serialize

    def refuse(_value, _nodes):
        raise serialize.NotSerializable("a test refusal")

    monkeypatch.setattr(serialize, "encode", refuse)
    result = _export(tiny_dir)
    assert _status(result) == "miss" and "a test refusal" in result.report["export_cache"]["note"]
    assert _status(_export(tiny_dir)) == "miss"


def test_tests_never_write_the_users_cache():
    import os
    from pathlib import Path

    from autodeploy_cli.export.cache import cache_root

    assert os.environ.get("AD_CACHE_DIR") and Path.home() / ".cache" / "autodeploy" != cache_root()
