"""auto_deploy::torch_ssm and its references (chunked SSD with a state in and out, one recurrence step) against
transformers' own torch implementations of the Mamba2 scan."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.ssm import discretize_dt, ssd_chunked, ssm_step

hf_mamba2 = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
load_ops()
NO_LIMIT = (0.0, float("inf"))


def _inputs(b=2, s=21, H=4, P=8, G=2, N=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, dt = torch.randn(b, s, H, P, generator=g), torch.randn(b, s, H, generator=g)
    A = -torch.rand(H, generator=g) * 2
    B, C = torch.randn(b, s, G, N, generator=g), torch.randn(b, s, G, N, generator=g)
    D, dt_bias = torch.randn(H, generator=g), torch.randn(H, generator=g)
    return x, dt, A, B, C, D, dt_bias


@pytest.mark.parametrize("limit", [NO_LIMIT, (0.3, 2.0)])
def test_torch_ssm_matches_hf_chunk_scan(limit):
    x, dt, A, B, C, D, dt_bias = _inputs()
    want = hf_mamba2.mamba2_chunk_scan(x, dt, A, B, C, chunk_size=8, D=D, dt_bias=dt_bias, dt_softplus=True,
                                       dt_limit=limit)
    for chunk in (8, 5, 64):  # the SSD is exact for any chunk length
        got = torch.ops.auto_deploy.torch_ssm(x, A, B, C, D, dt, dt_bias, list(limit), chunk)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_initial_state_continues_the_sequence():
    x, dt, A, B, C, D, dt_bias = _inputs(s=29)
    dtd = discretize_dt(dt, dt_bias, NO_LIMIT)
    whole, final = ssd_chunked(x, dtd, A, B, C, D, 8)
    head, state = ssd_chunked(x[:, :13], dtd[:, :13], A, B[:, :13], C[:, :13], D, 8)
    tail, final2 = ssd_chunked(x[:, 13:], dtd[:, 13:], A, B[:, 13:], C[:, 13:], D, 8, state)
    torch.testing.assert_close(torch.cat([head, tail], 1), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final2, final, rtol=1e-5, atol=1e-5)
    _, hf_final = hf_mamba2.mamba2_chunk_scan(x, dt, A, B, C, chunk_size=8, D=D, dt_bias=dt_bias, dt_softplus=True,
                                              return_final_states=True)
    torch.testing.assert_close(final, hf_final, rtol=1e-5, atol=1e-5)


def test_step_matches_hf_selective_state_update():
    x, dt, A, B, C, D, dt_bias = _inputs(s=1)
    H, P, N = x.shape[2], x.shape[3], B.shape[3]
    state = torch.randn(2, H, P, N)
    hf_state = state.clone()
    want = hf_mamba2.mamba2_selective_state_update(
        hf_state, x[:, 0], dt[:, 0, :, None].expand(-1, -1, P), A[:, None, None].expand(-1, P, N), B[:, 0], C[:, 0],
        D[:, None].expand(-1, P), dt_bias=dt_bias[:, None].expand(-1, P), dt_softplus=True)
    got, new = ssm_step(state, x[:, 0], discretize_dt(dt[:, 0], dt_bias, NO_LIMIT), A, B[:, 0], C[:, 0], D)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(new, hf_state, rtol=1e-5, atol=1e-5)


def test_fake_keeps_the_shape_in_float32():
    x, dt, A, B, C, D, dt_bias = (t.to("meta") for t in _inputs())
    out = torch.ops.auto_deploy.torch_ssm(x.to(torch.bfloat16), A, B, C, D, dt, dt_bias, [0.0, 1.0], 8)
    assert out.shape == x.shape and out.dtype == torch.float32 and out.device.type == "meta"
