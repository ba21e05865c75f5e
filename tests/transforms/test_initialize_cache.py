"""initialize_cache: allocates every registered cache ([pages, page_size, n_kv, head_dim], kv dtype)."""

from __future__ import annotations

import torch
from torch import fx, nn

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.pipeline.interface import PassContext
from autodeploy_cli.pipeline.registry import build_options
from transforms.initialize_cache import InitializeCache


def _build(tiny_dir, *extra):
    cfg = resolve([], [f"model={tiny_dir('llama')}", "skip_loading_weights=true", "dtype=float32", "attn_page_size=4",
                       "max_seq_len=30", "max_batch_size=3", *extra])
    return cfg, build(cfg, stop_after="initialize_cache")


def test_allocates_the_cpu_pool(tiny_dir):
    cfg, result = _build(tiny_dir)
    iface = result.ctx.cache
    rec = result.records[-1]
    assert rec.name == "initialize_cache" and rec.num_matches == 4  # k and v of 2 layers
    assert sorted(iface.caches) == ["k_cache_0", "k_cache_1", "v_cache_0", "v_cache_1"]
    # CPU: max_batch_size x ceil(max_seq_len / page_size) pages = 3 x 8
    assert all(c.shape == (24, 4, 2, 16) and c.dtype == torch.float32 for c in iface.caches.values())
    assert rec.note == "Initialized 4 caches: 24 pages x 4 tokens, 0.000 GiB"


def test_kv_dtype_from_config(tiny_dir):
    cfg, result = _build(tiny_dir, "kv_cache_config.dtype=bfloat16")
    iface = result.ctx.cache
    assert {c.dtype for c in iface.caches.values()} == {torch.bfloat16}
    ids = torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(9).expand(2, 9)
    with torch.no_grad():
        hf = ModelFactory(cfg).materialize()
        want = hf(input_ids=ids.to(hf.device), position_ids=pos.to(hf.device)).logits
    got = iface.run_prefill(result.model, ids, pos)
    # keys/values rounded to bfloat16 in the cache: close, not exact
    assert (got - want).abs().max() / want.abs().max() < 2e-2


def test_without_caches_nothing_happens(tiny_dir):
    cfg = resolve([], [f"model={tiny_dir('llama')}"])
    ctx = PassContext(config=cfg, factory=None, device=torch.device("cpu"))  # type: ignore[arg-type]
    gm = fx.symbolic_trace(nn.Linear(2, 2))
    info = InitializeCache(build_options("initialize_cache", {"stage": "cache_init"})).apply(gm, ctx)
    assert info.num_matches == 0 and info.note == "no caches registered"
