"""Sampling on the model's device without a host sync, so sampled steps keep the host/GPU overlap of greedy ones.

Per row: greedy (temperature below sampler.MIN_TEMPERATURE) is argmax; otherwise logits / temperature, top-k and
top-p masks over one descending sort, then the Gumbel-max trick: argmax(masked + Gumbel noise) draws from
softmax(masked), with the noise from the request's own generator on the device (seeded: the same seed gives the
same tokens whatever else is in the batch). The per-row parameters travel in pinned buffers, copied
asynchronously; two of them take turns (a buffer is rewritten only after its last copy is done, which the host has
waited for anyway by reading that step's tokens); nothing here reads the device.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from autodeploy_cli.runtime.sampler import MIN_TEMPERATURE


class DeviceSampler:
    def __init__(self, device: torch.device, max_batch_size: int):
        self.device = device
        pin = device.type == "cuda"
        # per buffer: rows [R] int64 then temperature, k, p [3, R] float32 (one copy each)
        self._bufs = [(torch.empty(max_batch_size, dtype=torch.int64, pin_memory=pin),
                       torch.empty(3, max_batch_size, dtype=torch.float32, pin_memory=pin)) for _ in range(2)]
        self._copied: list = [None, None]
        self._flip = 0

    @staticmethod
    def wants(params: Sequence[Any]) -> bool:
        """Whether any row needs sampling (else argmax alone)."""
        return any(sp.temperature >= MIN_TEMPERATURE for sp in params)

    def sample(self, logits: torch.Tensor, params: Sequence[Any], generators: Sequence[torch.Generator]
               ) -> torch.Tensor:
        """logits [R, V] -> tokens [R] int64 on the device (greedy rows by argmax)."""
        tokens = logits.argmax(dim=-1)
        hot = [i for i, sp in enumerate(params) if sp.temperature >= MIN_TEMPERATURE]
        if not hot:
            return tokens
        n, vocab = len(hot), logits.shape[-1]
        b, self._flip = self._flip, self._flip ^ 1
        if self._copied[b] is not None:
            self._copied[b].synchronize()  # its step's tokens were read already: this returns at once
        host_rows, host_params = self._bufs[b]
        for j, i in enumerate(hot):
            sp = params[i]
            host_params[0, j] = float(sp.temperature)
            host_params[1, j] = float(sp.top_k if sp.top_k and 0 < sp.top_k < vocab else vocab)
            host_params[2, j] = float(sp.top_p)
            host_rows[j] = i
        dev = host_params[:, :n].to(self.device, non_blocking=True)
        rows = host_rows[:n].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self._copied[b] = torch.cuda.Event()
            self._copied[b].record()
        x = logits.index_select(0, rows).float()
        x = (x - x.max(dim=-1, keepdim=True).values) / dev[0].unsqueeze(1)
        ordered, order = x.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=x.device).unsqueeze(0)
        drop = rank >= dev[1].unsqueeze(1)  # top-k
        probs = torch.softmax(ordered, dim=-1)
        drop |= (probs.cumsum(dim=-1) - probs) >= dev[2].unsqueeze(1)  # top-p: the first token always stays
        ordered = ordered.masked_fill(drop, float("-inf"))
        noise = torch.stack([torch.rand(vocab, generator=generators[i], device=x.device) for i in hot])
        gumbel = -torch.log(-torch.log(noise.clamp(min=1e-20, max=1.0 - 1e-7)))
        pick = (ordered + gumbel).argmax(dim=-1, keepdim=True)
        return tokens.index_copy(0, rows, order.gather(1, pick).squeeze(1))
