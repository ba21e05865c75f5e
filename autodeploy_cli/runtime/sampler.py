"""Token sampling for the engine (one op call per step on the model's device, no host sync, reproducible per
request) and the checks of a request's sampling parameters.

The op is auto_deploy::<backend>_sample_tokens (the Triton kernel on CUDA, the torch reference elsewhere; semantics
in autodeploy_cli/ops/sampling.py): greedy rows, temperature, top-k and top-p in one launch, the random number of
each row hashed from (request seed, token index). So a seeded request draws the same tokens whatever shares its
batch, after a preemption, and whether or not its step was sampled on the host (logprobs / min_tokens steps call
the same op, then read the tokens). The per-row parameters travel in pinned buffers, copied asynchronously; two of
them take turns (a buffer is rewritten only after its last copy is done, which the host has waited for anyway by
reading that step's tokens).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch

from autodeploy_cli.ops import backends
from autodeploy_cli.ops.sampling import MIN_TEMPERATURE

_INT64 = 1 << 63


def as_int64(seed: int) -> int:
    """Any Python int -> the int64 with its low 64 bits (the hash reads bits)."""
    return ((int(seed) + _INT64) % (1 << 64)) - _INT64


def sampling_op(device: torch.device) -> Callable[..., torch.Tensor]:
    """The sample_tokens op of the sampling backend for `device`."""
    name = backends.resolve("sampling", "auto", device.type)
    backends.load("sampling", name)
    return getattr(torch.ops.auto_deploy, f"{name}_sample_tokens")


class DeviceSampler:
    def __init__(self, device: torch.device, max_batch_size: int):
        self.device = device
        self._op = sampling_op(device)
        pin = device.type == "cuda"
        # per buffer: temperature, top_p [2, R] float32 and top_k, seed, counter [3, R] int64 (one copy each)
        self._bufs = [(torch.empty(2, max_batch_size, dtype=torch.float32, pin_memory=pin),
                       torch.empty(3, max_batch_size, dtype=torch.int64, pin_memory=pin)) for _ in range(2)]
        self._copied: list = [None, None]
        self._flip = 0

    @staticmethod
    def wants(params: Sequence[Any]) -> bool:
        """Whether any row needs sampling (else argmax alone)."""
        return any(sp.temperature >= MIN_TEMPERATURE for sp in params)

    def sample(self, logits: torch.Tensor, params: Sequence[Any], seeds: Sequence[int],
               counters: Sequence[int]) -> torch.Tensor:
        """logits [R, V] -> tokens [R] int64 on the device. counters: each row's token index in its sequence."""
        n = len(params)
        b, self._flip = self._flip, self._flip ^ 1
        if self._copied[b] is not None:
            self._copied[b].synchronize()  # its step's tokens were read already: this returns at once
        host_f, host_i = self._bufs[b]
        host_f[:, :n] = torch.tensor([[float(sp.temperature) for sp in params], [float(sp.top_p) for sp in params]])
        host_i[:, :n] = torch.tensor([[int(sp.top_k or 0) for sp in params], [as_int64(s) for s in seeds],
                                      [int(c) for c in counters]], dtype=torch.int64)
        # whole buffers: a slice [:, :n] would be copied through pageable memory (a sync), and rows at offsets
        # that change with n would make Triton compile the kernel again for each pointer alignment
        dev_f = host_f.to(self.device, non_blocking=True)
        dev_i = host_i.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self._copied[b] = torch.cuda.Event()
            self._copied[b].record()
        return self._op(logits, dev_f[0, :n], dev_i[0, :n], dev_f[1, :n], dev_i[1, :n], dev_i[2, :n])


def validate(sp: Any) -> Optional[str]:
    """Why the sampling parameters are invalid (None: they are fine)."""
    if sp.max_tokens is None or sp.max_tokens < 1:
        return f"max_tokens must be at least 1, got {sp.max_tokens}"
    if sp.temperature is None or not (math.isfinite(sp.temperature) and sp.temperature >= 0):
        return f"temperature must be a finite number >= 0 (0 = greedy), got {sp.temperature}"
    if sp.top_p is None or not 0 < sp.top_p <= 1:  # NaN fails both comparisons
        return f"top_p must be in (0, 1], got {sp.top_p}"
    if sp.top_k is not None and sp.top_k < 0:
        return f"top_k must be >= 0 (0 or null = off), got {sp.top_k}"
    if sp.stop and not getattr(sp, "detokenize", True):
        return "stop strings need the output text: keep detokenize=True or use stop_token_ids"
    return None


def validate_logprobs(sp: Any, vocab_size: Optional[int]) -> Optional[str]:
    """Why min_tokens / logprobs / prompt_logprobs are invalid (None: fine)."""
    if sp.min_tokens is None or sp.min_tokens < 0 or sp.min_tokens > sp.max_tokens:
        return f"min_tokens must be in [0, max_tokens={sp.max_tokens}], got {sp.min_tokens}"
    for name in ("logprobs", "prompt_logprobs"):
        k = getattr(sp, name)
        if k is not None and (k < 0 or (vocab_size is not None and k > vocab_size)):
            return f"{name} must be null or in [0, {vocab_size or 'vocab size'}], got {k}"
    return None

