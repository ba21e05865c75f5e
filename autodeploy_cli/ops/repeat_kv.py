"""auto_deploy::torch_attention_repeat_kv: HF's `repeat_kv` (K/V heads repeated for grouped-query attention).

An intermediate form: `match_repeat_kv` produces it from the unsqueeze -> expand -> reshape chain and
`match_grouped_attention` folds it into `torch_attention`, which handles GQA natively.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("auto_deploy::torch_attention_repeat_kv", mutates_args=())
def torch_attention_repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """x: [b, n_kv, s, d] -> [b, n_kv * n_rep, s, d]; head j of the output is input head j // n_rep."""
    return x.repeat_interleave(n_rep, dim=1)


@torch_attention_repeat_kv.register_fake
def _repeat_kv_fake(x, n_rep):
    b, n_kv, s, d = x.shape
    return x.new_empty(b, n_kv * n_rep, s, d)
