"""auto_deploy::torch_causal_conv1d and its state-carrying reference against transformers' torch implementation
(`causal_conv1d_fn` for prompts, `causal_conv1d_update` for decode steps)."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.causal_conv import conv_with_state

hf = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
load_ops()


@pytest.mark.parametrize("activation", [None, "silu"])
def test_matches_hf_causal_conv1d_fn(activation):
    g = torch.Generator().manual_seed(0)
    x, w, bias = torch.randn(2, 11, 6, generator=g), torch.randn(6, 1, 4, generator=g), torch.randn(6, generator=g)
    want = hf.causal_conv1d_fn(x.transpose(1, 2), w.squeeze(1), bias, activation=activation).transpose(1, 2)
    got = torch.ops.auto_deploy.torch_causal_conv1d(x, w, bias, activation)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.ops.auto_deploy.torch_causal_conv1d(x, w, None, None),
                               hf.causal_conv1d_fn(x.transpose(1, 2), w.squeeze(1), None).transpose(1, 2))


def test_state_continues_a_prompt_and_matches_hf_updates():
    g = torch.Generator().manual_seed(1)
    x, w, bias = torch.randn(2, 9, 5, generator=g), torch.randn(5, 1, 4, generator=g), torch.randn(5, generator=g)
    whole, _ = conv_with_state(x, w, bias, "silu")
    head, state = conv_with_state(x[:, :2], w, bias, "silu")  # shorter than K - 1: the state keeps zeros
    assert state.shape == (2, 5, 3)
    outs = [head]
    hf_state = torch.cat([torch.zeros(2, 5, 1), state], -1)  # HF keeps K inputs, the oldest first
    for t in range(2, 9):
        step, state = conv_with_state(x[:, t: t + 1], w, bias, "silu", state)
        hf_step = hf.causal_conv1d_update(x[:, t: t + 1].transpose(1, 2), hf_state, w.squeeze(1), bias, "silu")
        torch.testing.assert_close(step, hf_step.transpose(1, 2), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(state, hf_state[..., 1:])
        outs.append(step)
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-6, atol=1e-6)


def test_fake_and_bad_activation():
    x, w = torch.empty(2, 5, 6, device="meta"), torch.empty(6, 1, 4, device="meta")
    assert torch.ops.auto_deploy.torch_causal_conv1d(x, w, None, "silu").shape == (2, 5, 6)
    with pytest.raises(ValueError, match="unsupported activation 'gelu'"):
        torch.ops.auto_deploy.torch_causal_conv1d(torch.randn(1, 3, 2), torch.randn(2, 1, 2), None, "gelu")
