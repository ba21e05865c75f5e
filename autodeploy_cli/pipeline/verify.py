"""`ad build --verify`: after every transform that changed the graph, run a fixed probe batch through the graph and
compare its logits with the HF eager model holding the same weights."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import fx, nn

from autodeploy_cli.log import get_logger
from autodeploy_cli.graph.core import is_graph_module
from autodeploy_cli.pipeline.interface import PassContext
from autodeploy_cli.pipeline.runner import TransformRecord
from autodeploy_cli.graph.core import retarget_device_kwargs
from autodeploy_cli.models.weights import assign_weights, source_tensors

# Relative error bound (max |out - ref| / max |ref|) by dtype
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}

class VerificationFailed(Exception):
    pass


@dataclass
class Verifier:
    """Holds the HF reference model and its logits on the probe batch."""

    reference: nn.Module
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    ref_logits: torch.Tensor
    tolerance: float
    rows: list[dict] = field(default_factory=list)
    first_failure: Optional[str] = None

    @classmethod
    def create(cls, ctx: PassContext, batch: int = 2, seq: int = 7) -> "Verifier":
        reference = ctx.factory.materialize(ctx.device)
        vocab = reference.get_input_embeddings().num_embeddings
        gen = torch.Generator().manual_seed(ctx.config.seed)
        input_ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(ctx.device)
        position_ids = torch.arange(seq, device=ctx.device).unsqueeze(0).expand(batch, seq).contiguous()
        with torch.no_grad():
            ref = reference(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits.float()
        dtype = next(reference.parameters()).dtype
        ctx.reference_model = reference  # load_weights reuses it: same weights, no second init
        return cls(reference, input_ids, position_ids, ref, TOLERANCE.get(dtype, 3e-2))

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
            assign_weights(gm, source_tensors(self.reference), ctx.weight_hooks, ctx.weight_slicers, ctx.device)
        with torch.no_grad():
            return gm(self.input_ids, self.position_ids)

    def __call__(self, record: TransformRecord, ctx: PassContext) -> None:
        if not is_graph_module(ctx.model) and ctx.probe is None:
            return
        if record.num_matches == 0:
            return  # graph unchanged
        out: Any = self._run(ctx)
        out = out.float()
        if out.shape != self.ref_logits.shape:
            err, rel = float("inf"), float("inf")
        else:
            err = (out - self.ref_logits).abs().max().item()
            rel = err / max(self.ref_logits.abs().max().item(), 1e-12)
        ok = rel <= self.tolerance
        record.verify = {"max_abs_err": err, "max_rel_err": rel, "ok": ok}
        self.rows.append({"transform": record.name, "stage": record.stage, **record.verify})
        get_logger().info(f"[VERIFY] {record.name}: max abs err {err:.3e}, rel {rel:.3e} {'ok' if ok else 'FAILED'}")
        if not ok and self.first_failure is None:
            self.first_failure = record.name
