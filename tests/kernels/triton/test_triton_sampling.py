"""The Triton sampler (kernels/triton/sampling.py) against auto_deploy::torch_sample_tokens: the same token per row
for greedy, temperature, top-k and top-p rows in bf16 and float32, odd vocabularies (Triton's interpreter on CPU);
on the GPU also a Llama-3-sized vocabulary, where float32 sums in another order may move a draw to a neighbour."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops.sampling import torch_sample_tokens


def _params(rows, vocab, device):
    pattern = [(0.0, 0, 1.0), (0.5, 0, 0.9), (1.0, 5, 1.0), (1.3, 0, 0.5), (1.0, 3, 1.0), (0.7, 0, 1.0),
               (0.9, 50, 0.95), (1.0, 1, 0.3), (1.1, 0, 0.99), (0.8, vocab, 0.7), (2.0, 2, 1.0), (0.6, 7, 0.8)]
    t, k, p = zip(*[pattern[i % len(pattern)] for i in range(rows)])
    return (torch.tensor(t, device=device), torch.tensor(k, device=device), torch.tensor(p, device=device),
            torch.arange(rows, device=device) * 7919 + (1 << 62), torch.arange(rows, device=device) + 100)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("vocab", [37, 2500])
def test_kernel_draws_the_reference_token(device, dtype, vocab):
    from kernels.triton.sampling import sample_tokens

    logits = (torch.randn(12, vocab, generator=torch.Generator().manual_seed(vocab)) * 3).to(dtype).to(device)
    params = _params(12, vocab, device)
    assert sample_tokens(logits, *params).tolist() == torch_sample_tokens(logits, *params).tolist()


def test_kernel_reads_a_strided_row_view(device):
    from kernels.triton.sampling import sample_tokens

    wide = torch.randn(6, 130, generator=torch.Generator().manual_seed(1)).to(device)
    params = _params(6, 100, device)
    assert sample_tokens(wide[:, :100], *params).tolist() == torch_sample_tokens(wide[:, :100], *params).tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_llama3_vocab_on_the_gpu():
    from kernels.triton.sampling import sample_tokens

    rows, vocab = 64, 128256
    logits = (torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 4).bfloat16().cuda()
    params = _params(rows, vocab, "cuda")
    got, want = sample_tokens(logits, *params), torch_sample_tokens(logits, *params)
    exact = [i for i in range(rows) if params[0][i] == 0 or params[1][i] in (1, 2, 3, 5, 7)]
    assert got[exact].tolist() == want[exact].tolist()
    assert (got == want).float().mean() >= 0.9, (got.tolist(), want.tolist())
