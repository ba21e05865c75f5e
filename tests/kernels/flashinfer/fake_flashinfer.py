"""A torch stand-in for the two FlashInfer wrappers the MLA backend uses, following their documented contract
(flashinfer 0.6: BatchMLAPagedAttentionWrapper.plan/run, BatchPrefillWithRaggedKVCacheWrapper.plan/run), so the
planner and the backend's Python paths (plan once per step, ragged vs paged, absorbed weights, CUDA-graph wrappers
re-planned before a replay) run on a CPU machine. It records every plan. The real kernels: the gpu-marked tests."""

from __future__ import annotations

import types

import torch

PLANS: list = []


def _attend(q, k, v, scale, q_pos):
    s = torch.einsum("thd,lhd->htl", q.float(), k.float()) * scale
    s = s.masked_fill(torch.arange(k.shape[0]).view(1, 1, -1) > q_pos.view(1, -1, 1), float("-inf"))
    return torch.einsum("htl,lhd->thd", torch.softmax(s, -1), v.float())


class BatchMLAPagedAttentionWrapper:
    def __init__(self, float_workspace_buffer, use_cuda_graph=False, qo_indptr=None, kv_indptr=None,
                 kv_indices=None, kv_len_arr=None, backend="auto"):
        self.graph = use_cuda_graph
        self.bufs = (qo_indptr, kv_indptr, kv_indices, kv_len_arr)

    def plan(self, qo_indptr, kv_indptr, kv_indices, kv_len_arr, num_heads, head_dim_ckv, head_dim_kpe, page_size,
             causal, sm_scale, q_data_type, kv_data_type):
        assert all(t.dtype == torch.int32 for t in (qo_indptr, kv_indptr, kv_indices, kv_len_arr))
        if self.graph:  # fixed buffers: the sizes must match the captured batch exactly
            for buf, t in zip(self.bufs, (qo_indptr, kv_indptr, kv_indices, kv_len_arr)):
                assert t.shape[0] <= buf.shape[0] and (buf is self.bufs[2] or t.shape[0] == buf.shape[0])
                buf[: t.shape[0]].copy_(t)
            self.arrays = self.bufs
        else:
            self.arrays = tuple(t.clone() for t in (qo_indptr, kv_indptr, kv_indices, kv_len_arr))
        self.p = dict(heads=num_heads, ckv=head_dim_ckv, kpe=head_dim_kpe, page=page_size, causal=causal,
                      scale=sm_scale, q_dtype=q_data_type, kv_dtype=kv_data_type)
        PLANS.append(("paged", self, dict(self.p)))

    def run(self, q_nope, q_pe, ckv_cache, kpe_cache, out=None):
        assert q_nope.is_contiguous() and q_pe.is_contiguous() and q_nope.dtype == self.p["q_dtype"]
        assert q_nope.shape[1:] == (self.p["heads"], self.p["ckv"]) and ckv_cache.shape[1] == self.p["page"]
        qo, kvp, idx, kv_len = self.arrays
        out = torch.empty_like(q_nope)
        for b in range(kv_len.shape[0]):
            L, t0, t1 = int(kv_len[b]), int(qo[b]), int(qo[b + 1])
            pages = idx[int(kvp[b]):int(kvp[b + 1])].long()
            ckv = ckv_cache[pages].reshape(-1, ckv_cache.shape[-1])[:L]
            kpe = kpe_cache[pages].reshape(-1, kpe_cache.shape[-1])[:L]
            q = torch.cat([q_nope[t0:t1], q_pe[t0:t1]], -1)
            k = torch.cat([ckv, kpe], -1).unsqueeze(1).expand(-1, q.shape[1], -1)
            v = ckv.unsqueeze(1).expand(-1, q.shape[1], -1)
            out[t0:t1] = _attend(q, k, v, self.p["scale"], torch.arange(L - (t1 - t0), L)).to(out.dtype)
        return out


class BatchPrefillWithRaggedKVCacheWrapper:
    def __init__(self, float_workspace_buffer, kv_layout="NHD"):
        assert kv_layout == "NHD"

    def plan(self, qo_indptr, kv_indptr, num_qo_heads, num_kv_heads, head_dim_qk, head_dim_vo=None, causal=False,
             sm_scale=None, q_data_type="float16", kv_data_type=None):
        self.p = dict(qo=qo_indptr.clone(), kv=kv_indptr.clone(), heads=num_qo_heads, kv_heads=num_kv_heads,
                      dqk=head_dim_qk, dvo=head_dim_vo, causal=causal, scale=sm_scale, q_dtype=q_data_type)
        PLANS.append(("ragged", self, dict(self.p)))

    def run(self, q, k, v, out=None):
        p = self.p
        assert q.shape[1:] == (p["heads"], p["dqk"]) and v.shape[-1] == p["dvo"] and p["causal"]
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        for b in range(p["qo"].shape[0] - 1):
            t0, t1, k0, k1 = int(p["qo"][b]), int(p["qo"][b + 1]), int(p["kv"][b]), int(p["kv"][b + 1])
            out[t0:t1] = _attend(q[t0:t1], k[k0:k1], v[k0:k1], p["scale"],
                                 torch.arange(k1 - k0 - (t1 - t0), k1 - k0)).to(out.dtype)
        return out


def module() -> types.ModuleType:
    fi = types.ModuleType("flashinfer")
    fi.BatchPrefillWithRaggedKVCacheWrapper = BatchPrefillWithRaggedKVCacheWrapper
    fi.mla = types.SimpleNamespace(BatchMLAPagedAttentionWrapper=BatchMLAPagedAttentionWrapper)
    return fi
