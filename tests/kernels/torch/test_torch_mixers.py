"""The `torch` cached mixers (SSM, causal conv, delta rule) over state slots: a flat batch of prefills and decodes
equals each sequence run alone, a prompt split over calls equals the prompt at once, stale slots never leak in."""

from __future__ import annotations

import pytest
import torch

import kernels.torch.causal_conv  # noqa: F401 - registers the cached ops
import kernels.torch.delta_rule  # noqa: F401
import kernels.torch.ssm  # noqa: F401
from tests.kernels.mixer_cases import (DECODE, LIMIT, MIXED, Batch, delta_inputs, ref_conv, ref_delta, ref_ssm,
                                       ssm_inputs, stale_states)

ops = torch.ops.auto_deploy


def _ssm(batch: Batch, x, dt, A, B, C, D, dtb, state):
    m = batch.meta("cpu")
    return ops.torch_cached_ssm(x[None], A, B[None], C[None], D, dt[None], dtb, m["batch_info_host"],
                                m["cu_seqlen_host"], m["use_initial_states"], m["slots"], state, LIMIT, 8)[0]


@pytest.mark.parametrize("batch", [MIXED, DECODE], ids=["mixed", "decode"])
def test_cached_ssm(batch):
    x, dt, A, B, C, D, dtb = ssm_inputs(sum(batch.lens))
    state = stale_states((4, 16, 16), batch, "cpu")
    want, want_state = ref_ssm(x, dt, A, B, C, D, dtb, batch, state)
    got = _ssm(batch, x, dt, A, B, C, D, dtb, state)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, want_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [MIXED, DECODE], ids=["mixed", "decode"])
def test_cached_causal_conv(batch):
    g = torch.Generator().manual_seed(3)
    x, w, bias = torch.randn(sum(batch.lens), 24, generator=g), torch.randn(24, 1, 4, generator=g), torch.randn(24)
    state = stale_states((24, 3), batch, "cpu")
    want, want_state = ref_conv(x, w, bias, batch, state)
    m = batch.meta("cpu")
    got = ops.torch_cached_causal_conv1d(x[None], w, bias, m["batch_info_host"], m["cu_seqlen_host"],
                                         m["use_initial_states"], m["slots"], state, "silu")[0]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, want_state)


@pytest.mark.parametrize("batch", [MIXED, DECODE], ids=["mixed", "decode"])
def test_cached_delta_rule(batch):
    q, k, v, g, beta = delta_inputs(sum(batch.lens))
    state = stale_states((4, 16, 16), batch, "cpu")
    want, want_state = ref_delta(q, k, v, g, beta, batch, state)
    m = batch.meta("cpu")
    got = ops.torch_cached_gated_delta_rule(q[None], k[None], v[None], g[None], beta[None], m["batch_info_host"],
                                            m["cu_seqlen_host"], m["use_initial_states"], m["slots"], state, None,
                                            True)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, want_state, rtol=1e-5, atol=1e-5)


def test_a_prompt_in_chunks_equals_the_prompt_at_once():
    """23 tokens as 7 + 9 + 7 (chunk boundaries off the SSD chunk of 8), continuing the slot's state."""
    x, dt, A, B, C, D, dtb = ssm_inputs(23)
    whole_state = stale_states((4, 16, 16), Batch([23], [2], [False]), "cpu")
    chunked_state = whole_state.clone()
    whole = _ssm(Batch([23], [2], [False]), x, dt, A, B, C, D, dtb, whole_state)
    outs = []
    for s0, s1 in ((0, 7), (7, 16), (16, 23)):
        outs.append(_ssm(Batch([s1 - s0], [2], [s0 > 0]), x[s0:s1], dt[s0:s1], A, B[s0:s1], C[s0:s1], D, dtb,
                         chunked_state))
    torch.testing.assert_close(torch.cat(outs), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked_state[2], whole_state[2], rtol=1e-5, atol=1e-5)
