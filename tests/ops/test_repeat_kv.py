"""torch_attention_repeat_kv: equals HF's repeat_kv."""

from __future__ import annotations

import torch

from autodeploy_cli.ops import load_ops

load_ops()
REPEAT_KV = torch.ops.auto_deploy.torch_attention_repeat_kv


def test_equals_hf_repeat_kv():
    from transformers.models.llama.modeling_llama import repeat_kv

    x = torch.randn(2, 3, 5, 4)
    for n_rep in (1, 2, 4):
        assert torch.equal(REPEAT_KV(x, n_rep), repeat_kv(x, n_rep))


def test_opcheck():
    torch.library.opcheck(REPEAT_KV.default, (torch.randn(2, 2, 3, 4), 3),
                          test_utils=("test_schema", "test_faketensor"))
