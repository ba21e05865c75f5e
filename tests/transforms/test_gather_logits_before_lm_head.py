"""gather_logits_before_lm_head: the LM head runs on the gathered tokens only; soft-capping after it still applies."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.registry import build_options
from transforms.gather_logits_before_lm_head import GatherLogitsBeforeLmHead, find_lm_head

OPTS = build_options("gather_logits_before_lm_head", {"stage": "cache_init"})


@pytest.fixture(scope="module")
def built(tiny_dir):
    # gemma2: final_logit_softcapping puts div/tanh/mul between the head and the output
    cfg = resolve([], [f"model={tiny_dir('gemma2')}", "skip_loading_weights=true", "dtype=float32", "attn_page_size=4",
                       "max_seq_len=32"])
    result = build(cfg, stop_after="gather_logits_before_lm_head")
    return result, ModelFactory(cfg).materialize()


def test_gathers_before_the_head(built):
    result, _ = built
    gm = result.model
    assert result.records[-1].num_matches == 1
    head = find_lm_head(gm)
    assert head is not None and head.args[1].target == "lm_head.weight"
    unsq = head.args[0]
    sel = unsq.args[0]
    assert is_op(unsq, torch.ops.aten.unsqueeze.default) and is_op(sel, torch.ops.aten.index_select.default)
    assert sel.args[2].op == "placeholder" and sel.args[2].name == "logits_gather_idx"
    assert result.ctx.cache.logits_gathered


def test_last_token_and_all_token_logits_match_hf(built):
    result, hf = built
    iface = result.ctx.cache
    ids = torch.randint(0, 320, (3, 9), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(9).expand(3, 9)
    with torch.no_grad():
        want = hf(input_ids=ids.to(hf.device), position_ids=pos.to(hf.device)).logits
    last = iface.run_prefill(result.model, ids, pos, gather="last")
    assert last.shape == (3, 320)  # [B, vocab]: the head ran on 3 rows, not 27
    torch.testing.assert_close(last, want[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(iface.run_prefill(result.model, ids, pos), want, rtol=1e-5, atol=1e-5)


def test_applied_twice_and_no_head(built):
    result, _ = built
    info = GatherLogitsBeforeLmHead(OPTS).apply(result.model, result.ctx)
    assert info.num_matches == 0 and info.note == "already gathered"

    class NoHead(nn.Module):
        def forward(self, x):
            return torch.relu(x) + x

    gm = fx.symbolic_trace(NoHead())
    before = str(gm.graph)
    info = GatherLogitsBeforeLmHead(OPTS).apply(gm, result.ctx)
    assert info.num_matches == 0 and str(gm.graph) == before
