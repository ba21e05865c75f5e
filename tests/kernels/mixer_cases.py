"""Shared cases of the cached-mixer kernel tests: a flat batch of prefill chunks and decodes over state slots, and
the per-sequence reference built from the canonical ops' plain-torch references."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autodeploy_cli.ops.causal_conv import conv_with_state
from autodeploy_cli.ops.delta_rule import delta_chunked, prepare_qk
from autodeploy_cli.ops.ssm import discretize_dt, ssd_chunked

LIMIT = [0.0, float("inf")]


@dataclass
class Batch:
    """Sequences of `lens` tokens (prefills first, then one-token decodes) on `slots`; `init[b]` = input_pos > 0."""

    lens: list[int]
    slots: list[int]
    init: list[bool]
    num_slots: int = 8

    @property
    def num_prefill(self) -> int:
        return sum(1 for n, i in zip(self.lens, self.init) if not (n == 1 and i))

    def meta(self, device: str) -> dict:
        cu = [0]
        for n in self.lens:
            cu.append(cu[-1] + n)
        npt = cu[self.num_prefill]
        info = torch.tensor([len(self.lens), cu[-1], self.num_prefill, npt, len(self.lens) - self.num_prefill,
                             max(self.lens), 0])
        return dict(batch_info_host=info, cu_seqlen_host=torch.tensor(cu, dtype=torch.int32),
                    cu_seqlen=torch.tensor(cu, dtype=torch.int32, device=device),
                    use_initial_states=torch.tensor(self.init, device=device),
                    slots=torch.tensor(self.slots, dtype=torch.long, device=device))

    def spans(self) -> list[tuple[int, int]]:
        cu = [0]
        for n in self.lens:
            cu.append(cu[-1] + n)
        return list(zip(cu[:-1], cu[1:]))


MIXED = Batch(lens=[5, 19, 1, 1, 1], slots=[3, 0, 5, 1, 6], init=[False, True, False, True, True])
DECODE = Batch(lens=[1, 1, 1], slots=[2, 7, 4], init=[True, False, True])


def stale_states(shape: tuple, batch: Batch, device: str, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Random states; the slots of sequences that start fresh hold NaN (a slot's old owner must not leak in)."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch.num_slots, *shape, generator=g).to(dtype)
    for slot, init in zip(batch.slots, batch.init):
        if not init:
            states[slot] = float("nan")
    return states.to(device)


def ref_ssm(x, dt, A, B, C, D, dt_bias, batch: Batch, state):
    """Per sequence: chunked SSD from its slot (or zero); returns (y [T, H, P], new states)."""
    state, ys = state.clone().float(), []
    dtd = discretize_dt(dt, dt_bias, LIMIT)
    for (s0, s1), slot, init in zip(batch.spans(), batch.slots, batch.init):
        y, h = ssd_chunked(x[None, s0:s1].float(), dtd[None, s0:s1], A, B[None, s0:s1], C[None, s0:s1], D, 8,
                           state[slot][None] if init else None)
        ys.append(y[0])
        state[slot] = h[0]
    return torch.cat(ys), state


def ref_conv(x, w, bias, batch: Batch, state, activation="silu"):
    state, outs = state.clone(), []
    for (s0, s1), slot, init in zip(batch.spans(), batch.slots, batch.init):
        o, new = conv_with_state(x[None, s0:s1], w, bias, activation, state[slot][None] if init else None)
        outs.append(o[0])
        state[slot] = new[0].to(state.dtype)
    return torch.cat(outs), state


def ref_delta(q, k, v, g, beta, batch: Batch, state):
    state, outs = state.clone().float(), []
    for (s0, s1), slot, init in zip(batch.spans(), batch.slots, batch.init):
        qh, kh = prepare_qk(q[None, s0:s1], k[None, s0:s1], v.shape[1], None, True)
        o, S = delta_chunked(qh, kh, v[None, s0:s1].float(), None if g is None else g[None, s0:s1],
                             beta[None, s0:s1], state[slot][None] if init else None)
        outs.append(o[0])
        state[slot] = S[0]
    return torch.cat(outs), state


def ssm_inputs(T, H=4, P=16, G=2, N=16, device="cpu", dtype=torch.float32, seed=0) -> list[torch.Tensor]:
    """x [T, H, P], dt [T, H], A [H] (float32), B, C [T, G, N], D [H], dt_bias [H]."""
    g = torch.Generator().manual_seed(seed)
    x, dt = torch.randn(T, H, P, generator=g), torch.randn(T, H, generator=g)
    B, C = torch.randn(T, G, N, generator=g), torch.randn(T, G, N, generator=g)
    A, D, dt_bias = -torch.rand(H, generator=g) * 2, torch.randn(H, generator=g), torch.randn(H, generator=g)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return [cast(x), cast(dt), A.to(device), cast(B), cast(C), cast(D), cast(dt_bias)]


def delta_inputs(T, Hk=2, Hv=4, K=16, V=16, device="cpu", dtype=torch.float32, seed=0) -> list[torch.Tensor]:
    """q, k [T, Hk, K], v [T, Hv, V], g [T, Hv] (float32, <= 0), beta [T, Hv]."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(T, Hk, K, generator=g), torch.randn(T, Hk, K, generator=g), torch.randn(T, Hv, V, generator=g)
    decay, beta = -torch.rand(T, Hv, generator=g), torch.rand(T, Hv, generator=g)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return [cast(q), cast(k), cast(v), decay.to(device), cast(beta)]
