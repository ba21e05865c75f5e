"""torch.export capture of a HF causal LM into a flat GraphModule: forward(input_ids, position_ids) -> logits.

Export runs non-strict, under no_grad, on meta weights, with dynamic batch and sequence dims. HF quirks are handled
by named export patches (small context managers) from `autodeploy_cli.export.patches`, toggled in config.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable

import torch
from torch import fx, nn

GRAPH_INPUTS = ("input_ids", "position_ids")


def example_inputs(device: torch.device | str, batch: int = 2, seq: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Example inputs for capture; batch and seq > 1 so neither dim is specialised."""
    input_ids = torch.ones(batch, seq, dtype=torch.long, device=device)
    position_ids = torch.arange(seq, device=device).unsqueeze(0).expand(batch, seq)
    return input_ids, position_ids


@contextlib.contextmanager
def _logits_only_forward(model: nn.Module):
    """Temporarily make `model.forward(input_ids, position_ids)` return only the logits (no KV cache)."""
    original = model.forward

    def forward(input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return original(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits

    model.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.forward  # restores the class method


def drop_input_checks(gm: fx.GraphModule) -> None:
    """Remove torch.export's pre-hook that checks call inputs against the exported signature: transforms add
    graph inputs (caches, metadata) later."""
    hooks = getattr(gm, "_forward_pre_hooks", {})
    for key, hook in list(hooks.items()):
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del hooks[key]
            getattr(gm, "_forward_pre_hooks_with_kwargs", {}).pop(key, None)


def _flatten_codegen(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop export's pytree in/out specs and input checks: plain positional inputs, a single logits output."""
    drop_input_checks(gm)
    gm.graph._codegen = fx.graph.CodeGen()
    for node in list(gm.graph.nodes):
        if node.op == "output":
            out = node.args[0]
            if isinstance(out, (list, tuple)) and len(out) == 1:
                node.args = (out[0],)
    gm.recompile()
    return gm


def export_to_graph_module(
    model: nn.Module,
    max_batch_size: int,
    max_seq_len: int,
    patches: Iterable[contextlib.AbstractContextManager] = (),
) -> fx.GraphModule:
    """Capture `model` (usually on meta) with dynamic batch/seq dims; returns the flat GraphModule."""
    from torch.export import Dim

    device = next(iter(model.parameters())).device
    args = example_inputs(device)
    batch = Dim("batch", min=1, max=max(2, max_batch_size))
    seq = Dim("seq", min=1, max=max(4, max_seq_len))
    dynamic_shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
    with contextlib.ExitStack() as stack, torch.no_grad():
        for patch in patches:
            stack.enter_context(patch)
        stack.enter_context(_logits_only_forward(model))
        # deferred asserts: HF code that branches on sizes (e.g. torch 2.11 with mask building) must not turn into
        # guards that pin the dynamic dims
        ep = torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False,
                                 prefer_deferred_runtime_asserts_over_guards=True)
    gm = ep.module()
    return _flatten_codegen(gm)


def graph_input_names(gm: fx.GraphModule) -> list[str]:
    return [n.name for n in gm.graph.nodes if n.op == "placeholder"]


def run_graph(gm: nn.Module, *args: Any) -> Any:
    with torch.no_grad():
        return gm(*args)
