"""auto_deploy::torch_dist_all_reduce / torch_dist_all_gather: the torch reference on gloo (one rank here; two and
four ranks run in tests/distributed), shapes without a process group, and on a GPU: NCCL with one rank, captured
in a CUDA graph and replayed (marked gpu)."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode

from autodeploy_cli.ops import load_ops

load_ops()
OPS = torch.ops.auto_deploy
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_rank_group(request):
    backend = getattr(request, "param", "gloo")
    store = dist.TCPStore("127.0.0.1", _port(), 1, True, timedelta(seconds=30))
    dist.init_process_group(backend, store=store, rank=0, world_size=1)
    yield backend
    dist.destroy_process_group()


def test_without_a_process_group_the_ops_copy():
    x = torch.randn(2, 3, 8)
    for out in (OPS.torch_dist_all_reduce(x), OPS.torch_dist_all_gather(x, -1, 1)):
        assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    with pytest.raises(RuntimeError, match="built for 2 ranks but the process group has 1"):
        OPS.torch_dist_all_gather(x, -1, 2)


def test_fake_shapes_know_the_world_size():
    with FakeTensorMode():
        x = torch.empty(2, 5, 16)
        assert OPS.torch_dist_all_gather(x, -1, 4).shape == (2, 5, 64)
        assert OPS.torch_dist_all_gather(x, 1, 2).shape == (2, 10, 16)
        assert OPS.torch_dist_all_reduce(x).shape == (2, 5, 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gloo_reference(one_rank_group, dtype):
    x = torch.randn(3, 7, dtype=dtype)
    assert torch.equal(OPS.torch_dist_all_reduce(x), x)
    assert torch.equal(OPS.torch_dist_all_gather(x, -1, 1), x)
    assert OPS.torch_dist_all_reduce(x).dtype == dtype


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("one_rank_group", ["nccl"], indirect=True)
def test_nccl_one_rank_captured_in_a_cuda_graph(one_rank_group):
    x = torch.randn(4, 4096, device="cuda", dtype=torch.bfloat16)

    def step(t):
        y = OPS.torch_dist_all_reduce(t * 2)
        return OPS.torch_dist_all_gather(y, -1, 1) + 1

    want = step(x)
    torch.testing.assert_close(want, x * 2 + 1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(x)  # warm-up (NCCL communicator set up outside the capture)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(x)
    for _ in range(3):  # replays read the new input
        new = torch.randn_like(x)
        x.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, new * 2 + 1)
