"""The once-per-forward metadata op every torch (and triton) cached mixer reads (see ops/mixer_interface.py).

    auto_deploy::torch_mixer_prepare_metadata(input_pos [B], slot_idx [B])
        -> use_initial_states [B] bool (input_pos > 0: continue the slot's state), slots [B] int64
"""

from __future__ import annotations

import torch

from autodeploy_cli.ops.attention_interface import PrepareMetadata


@torch.library.custom_op("auto_deploy::torch_mixer_prepare_metadata", mutates_args=())
def torch_mixer_prepare_metadata(input_pos: torch.Tensor, slot_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return input_pos > 0, slot_idx.long()


@torch_mixer_prepare_metadata.register_fake
def _prepare_fake(input_pos, slot_idx):
    return input_pos.new_empty(input_pos.shape, dtype=torch.bool), slot_idx.new_empty(slot_idx.shape,
                                                                                      dtype=torch.long)


def mixer_prepare_metadata() -> PrepareMetadata:
    return PrepareMetadata(op=torch.ops.auto_deploy.torch_mixer_prepare_metadata.default,
                           fields=("input_pos", "slot_idx"), num_outputs=2)


def prefill_spans(batch_info_host: torch.Tensor, cu_seqlen_host: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) token spans of the prefill sequences of a mixed batch (host values only)."""
    num_prefill = int(batch_info_host[2])
    cu = cu_seqlen_host[: num_prefill + 1].tolist()
    return list(zip(cu[:-1], cu[1:]))


def masked_states(states: torch.Tensor, slots: torch.Tensor, use_initial: torch.Tensor) -> torch.Tensor:
    """states[slots], zeroed where a sequence starts fresh (its slot may hold an earlier sequence's state)."""
    picked = states.index_select(0, slots)
    keep = use_initial.view(-1, *([1] * (picked.dim() - 1)))
    return torch.where(keep, picked, torch.zeros_like(picked))
