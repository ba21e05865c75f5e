"""auto_deploy::torch_sample_tokens: one token per logit row (greedy, temperature, top-k, top-p), drawn without a sort
of the vocabulary in the kernels and without a host sync; this module is the plain-torch reference.

Per row, with scaled logits s = (x - max) / temperature:
- greedy (temperature < MIN_TEMPERATURE): argmax x;
- top-k keeps the tokens at or above the k-th largest logit (ties stay, like HF's TopKLogitsWarper);
- top-p then keeps the tokens at or above the largest logit t whose kept mass sum(exp(s), x >= t) reaches
  top_p times the top-k set's mass (the smallest set of most likely tokens reaching top_p, ties included; HF order);
- the token is drawn by inverse CDF: the first token, in vocabulary order, whose running kept mass exceeds
  u * (kept mass), with u in (0, 1) a hash of (seed, counter). counter is the token's index in its sequence, so a
  seeded request draws the same tokens whatever else shares its batch, and a recomputed one (preemption) too.
"""

from __future__ import annotations

import torch

MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy: dividing float32 logits by it would overflow
_MASK64 = (1 << 64) - 1


def _signed(c: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch integer ops wrap modulo 2**64)."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def uniform_from_seed(seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """u in (0, 1), float32: the splitmix64 finaliser of seed + (counter + 1) * golden ratio, top 24 bits."""
    z = seed.to(torch.int64) + (counter.to(torch.int64) + 1) * _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    z = z ^ _shr(z, 31)
    return (_shr(z, 40).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def order_keys(x: torch.Tensor) -> torch.Tensor:
    """float32 values -> int64 keys in the same order (the kernels search these bit patterns)."""
    bits = x.float().contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= 1 << 31, bits ^ 0xFFFFFFFF, bits | (1 << 31))


def _top_p_threshold(keys: torch.Tensor, mass: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row, the largest key t with sum(mass, keys >= t) >= top_p * sum(mass): found over one sort."""
    sorted_keys, order = keys.sort(dim=-1, descending=True)
    cum = mass.gather(-1, order).cumsum(-1)
    first = (cum < top_p.unsqueeze(1) * cum[:, -1:]).sum(-1, keepdim=True).clamp(max=keys.shape[-1] - 1)
    return sorted_keys.gather(-1, first)


@torch.library.custom_op("auto_deploy::torch_sample_tokens", mutates_args=())
def torch_sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                        seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """logits [R, V] (any float dtype); temperature, top_p [R] float32; top_k, seed, counter [R] int64 (top_k >= V
    or <= 0: off). Returns tokens [R] int64."""
    x = logits.float()
    greedy = x.argmax(dim=-1)
    vocab = x.shape[-1]
    keys = order_keys(x)
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab).clamp(min=1)
    kth = keys.sort(dim=-1, descending=True).values.gather(-1, (k - 1).unsqueeze(1))
    temp = temperature.clamp(min=MIN_TEMPERATURE).unsqueeze(1)
    mass = torch.exp((x - x.max(dim=-1, keepdim=True).values) / temp) * (keys >= kth)
    # top_p = 1 keeps the whole top-k set (a cumsum in float32 may reach its total before the last tiny token)
    threshold = torch.where(top_p.unsqueeze(1) < 1, torch.maximum(_top_p_threshold(keys, mass, top_p), kth), kth)
    cum = (mass * (keys >= threshold)).cumsum(-1)
    target = uniform_from_seed(seed, counter).unsqueeze(1) * cum[:, -1:]
    drawn = (cum <= target).sum(-1)  # the first token whose running mass exceeds the target
    drawn = torch.where(drawn < vocab, drawn, greedy)  # u * total rounded up to the total: no token exceeds it
    return torch.where(temperature < MIN_TEMPERATURE, greedy, drawn)


@torch_sample_tokens.register_fake
def _sample_tokens_fake(logits, temperature, top_k, top_p, seed, counter):
    return logits.new_empty(logits.shape[0], dtype=torch.int64)
