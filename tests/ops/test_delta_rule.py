"""auto_deploy::torch_gated_delta_rule and its references against transformers' torch implementations of the gated
delta rule (Qwen3-Next's chunked and recurrent forms), with q/k L2-norm, grouped value heads and states."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.delta_rule import delta_chunked, delta_step, prepare_qk

hf = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
load_ops()


def _inputs(b=2, s=19, Hk=2, Hv=4, K=8, V=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, s, Hk, K, generator=g), torch.randn(b, s, Hk, K, generator=g)
    v = torch.randn(b, s, Hv, V, generator=g)
    return q, k, v, -torch.rand(b, s, Hv, generator=g), torch.rand(b, s, Hv, generator=g)


def test_matches_hf_chunked_gated_delta_rule():
    q, k, v, g, beta = _inputs()
    want, _ = hf.torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=8, use_qk_l2norm_in_kernel=True)
    got = torch.ops.auto_deploy.torch_gated_delta_rule(q, k, v, g, beta, None, True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_states_in_and_out_match_hf_recurrent_form():
    q, k, v, g, beta = _inputs(s=11)
    init = torch.randn(2, 4, 8, 6)
    want, want_state = hf.torch_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=init,
                                                           output_final_state=True, use_qk_l2norm_in_kernel=True)
    qh, kh = prepare_qk(q, k, 4, None, True)
    for chunk in (4, 64):
        got, state = delta_chunked(qh, kh, v, g, beta, init, chunk_size=chunk)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state, want_state, rtol=1e-5, atol=1e-5)
    o, s1 = delta_step(init, qh[:, 0], kh[:, 0], v[:, 0], g[:, 0], beta[:, 0])
    torch.testing.assert_close(o, want[:, 0].float(), rtol=1e-5, atol=1e-5)


def test_deltanet_without_decay_and_with_a_scale():
    q, k, v, g, beta = _inputs(s=7)
    zero = torch.zeros_like(g)
    want, _ = hf.torch_recurrent_gated_delta_rule(q * 2.0, k, v, zero, beta, use_qk_l2norm_in_kernel=False)
    got = torch.ops.auto_deploy.torch_gated_delta_rule(q, k, v, None, beta, 2.0 * 8 ** -0.5, False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fake_shape():
    q, k, v, g, beta = (t.to("meta") for t in _inputs())
    assert torch.ops.auto_deploy.torch_gated_delta_rule(q, k, v, g, beta).shape == v.shape
