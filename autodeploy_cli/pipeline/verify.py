"""`ad build --verify`: after every transform, compare the graph with the HF eager model holding the same weights.

Two checks, each a row of the report with the tolerance that applied (autodeploy_cli/pipeline/tolerance.py):
- logits: a fixed probe batch (2 x 7 tokens from position 0) through the graph (through the cache interface once the
  graph takes caches), vs HF's logits;
- generation: once the graph takes caches, the runtime's path step by step (verify_generation.py): prompts of
  different lengths across pages, prefills mixed with decodes, chunked prefill when enabled, single-sequence decode
  at the end, through the compiled model (CUDA graphs, GEMV) after compile_model.
A transform that reports no match is listed as "n/a" (it did not change the graph; nothing to check).
Quantized builds (quality_gate.py): a transform that quantizes on purpose gets a "quality" row (cosine and top-1 vs
the unquantized model) instead of the logits check, and later logits rows compare with its output.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import fx, nn

from autodeploy_cli.graph.core import is_graph_module, retarget_device_kwargs
from autodeploy_cli.log import get_logger
from autodeploy_cli.models.weights import assign_weights
from autodeploy_cli.ops.mixer_interface import has_whole_prompt_ops
from autodeploy_cli.pipeline.interface import PassContext
from autodeploy_cli.pipeline.quality_gate import QualityGate
from autodeploy_cli.pipeline.runner import TransformRecord
from autodeploy_cli.pipeline.tolerance import Tolerance, tolerance_for
from autodeploy_cli.pipeline.verify_generation import Trajectory, hf_trajectories, plan_prompts, run_generation


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max|ref| (inf on a shape mismatch)."""
    if out.shape != ref.shape:
        return float("inf")
    return (out.float() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)


@dataclass
class Verifier:
    """Holds the HF reference model, its logits on the probe batch and its greedy trajectories."""

    reference: nn.Module
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    ref_logits: torch.Tensor
    param_dtype: torch.dtype
    kv_dtype: str
    chunk: int  # prompt tokens per step in the generation check (chunked prefill), or every token
    trajectories: Optional[list[Trajectory]] = None
    rows: list[dict] = field(default_factory=list)
    first_failure: Optional[str] = None
    gate: Optional[QualityGate] = None  # quantized builds: logits vs the unquantized model

    @classmethod
    def create(cls, ctx: PassContext, batch: int = 2, seq: int = 7) -> "Verifier":
        reference = ctx.factory.materialize(ctx.device)
        vocab = reference.get_input_embeddings().num_embeddings
        gen = torch.Generator().manual_seed(ctx.config.seed)
        input_ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(ctx.device)
        position_ids = torch.arange(seq, device=ctx.device).unsqueeze(0).expand(batch, seq).contiguous()
        with torch.no_grad():
            ref = reference(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits.float()
        ctx.reference_model = reference  # load_weights reuses it: same weights, no second init
        cfg = ctx.config
        chunk = 5 if cfg.enable_chunked_prefill else 1 << 30
        return cls(reference, input_ids, position_ids, ref, next(reference.parameters()).dtype,
                   ctx.factory.kv_cache_dtype(), chunk, gate=QualityGate(ref))

    # --- running the graph ---------------------------------------------------------------------------------------
    def _run(self, ctx: PassContext) -> torch.Tensor:
        if ctx.probe is not None:
            return ctx.probe(self.input_ids, self.position_ids)
        gm = ctx.model
        assert isinstance(gm, fx.GraphModule)
        if any(p.device.type == "meta" for p in gm.parameters()):
            with warnings.catch_warnings():  # torch's deepcopy of pytree specs warns about its own internals
                warnings.simplefilter("ignore", FutureWarning)
                gm = copy.deepcopy(gm)  # before load_weights: run a copy holding the reference weights
            retarget_device_kwargs(gm, ctx.device)
            assign_weights(gm, ctx.factory.weight_tensors(ctx.device, self.reference), ctx.weight_hooks,
                           ctx.weight_slicers, ctx.device)
        with torch.no_grad():
            return gm(self.input_ids, self.position_ids)

    def _generation(self, ctx: PassContext, tol: Tolerance) -> dict:
        iface = ctx.cache_interface()
        info = iface.info
        if self.trajectories is None:
            plan = plan_prompts(self.ref_logits.shape[-1], info.page_size, info.max_seq_len, info.max_batch_size,
                                info.max_num_tokens, ctx.config.seed, ctx.config.enable_chunked_prefill)
            self.trajectories = hf_trajectories(self.reference, plan, ctx.device)
        decisive = 2 * tol.bound * max(t.ref_logits.abs().max().item() for t in self.trajectories)
        compare = lambda out, ref: rel_err(out, ref)  # noqa: E731 - per step, relative to that step's logits
        res = run_generation(ctx.model, iface, self.trajectories, self.chunk, compare, decisive)
        ok = res.max_rel_err <= tol.bound and res.token_mismatches == 0
        return {"check": "generation", "max_rel_err": res.max_rel_err, "token_mismatches": res.token_mismatches,
                "steps": res.steps, "ok": ok, "details": res.details[:3]}

    # --- the runner hook ---------------------------------------------------------------------------------------
    def __call__(self, record: TransformRecord, ctx: PassContext) -> None:
        if not is_graph_module(ctx.model) and ctx.probe is None:
            return  # no graph yet (build_model)
        base = {"transform": record.name, "stage": record.stage}
        if record.num_matches == 0:
            self._add(record, {**base, "check": "n/a", "ok": True, "max_rel_err": None,
                               "note": "no match: the graph did not change"})
            return
        tol = tolerance_for(self.param_dtype, self.kv_dtype, cached=ctx.probe is not None)
        out = self._run(ctx)
        err = rel_err(out, self.ref_logits)
        quality = self.gate.observe(record.name, ctx, out) if self.gate is not None else None
        if quality is not None:  # quantized on purpose: the gate judges it; later rows compare with its logits
            self.ref_logits = out.float()
            self._add(record, {**base, "check": "quality", "max_rel_err": err, "ok": quality["ok"], "quality": quality,
                               "tolerance": tol.bound, "tolerance_reason": "quality gate vs the unquantized model"})
        else:
            self._add(record, {**base, "check": "logits", "max_rel_err": err, "ok": err <= tol.bound,
                               "tolerance": tol.bound, "tolerance_reason": tol.reason})
        if ctx.probe is not None and has_whole_prompt_ops(ctx.model):
            self._add(record, {**base, "check": "n/a", "ok": True, "max_rel_err": None,
                               "note": "generation waits until every stateful mixer has its cached form"})
        elif ctx.probe is not None:
            gtol = self.gate.generation_tolerance(tol) if self.gate is not None else tol
            self._add(record, {**base, **self._generation(ctx, gtol), "tolerance": gtol.bound,
                               "tolerance_reason": gtol.reason})

    def _add(self, record: TransformRecord, row: dict) -> None:
        self.rows.append(row)
        checked = [r for r in self.rows if r["transform"] == record.name and r["check"] != "n/a"]
        worst = max((r["max_rel_err"] for r in checked), default=None)
        record.verify = {"max_abs_err": None, "max_rel_err": worst, "ok": all(r["ok"] for r in checked),
                         "checks": [r["check"] for r in self.rows if r["transform"] == record.name]}
        if row["check"] == "n/a":
            get_logger().info(f"[VERIFY] {record.name}: n/a ({row['note']})")
            return
        extra = f", {row['token_mismatches']} token mismatches over {row['steps']} steps" \
            if row["check"] == "generation" else ""
        status = "ok" if row["ok"] else "FAILED"
        get_logger().info(f"[VERIFY] {record.name} {row['check']}: rel {row['max_rel_err']:.3e} (tolerance "
                          f"{row['tolerance']:.0e}, {row['tolerance_reason']}){extra} {status}")
        if not row["ok"] and self.first_failure is None:
            self.first_failure = record.name
