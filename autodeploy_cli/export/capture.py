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
    """Remove torch.export's forward hooks: the pre-hook that checks call inputs against the exported signature
    (transforms add graph inputs later: caches, metadata) and the bookkeeping hooks for nn.Module-typed inputs
    (ours are tensors, so they do nothing)."""
    for hooks, with_kwargs in ((gm._forward_pre_hooks, gm._forward_pre_hooks_with_kwargs),
                               (gm._forward_hooks, gm._forward_hooks_with_kwargs)):
        for key, hook in list(hooks.items()):
            if getattr(hook, "__module__", "") == "torch.export._unlift":
                del hooks[key]
                with_kwargs.pop(key, None)
                gm._forward_hooks_always_called.pop(key, None)


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


def _meta_constants(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Tensors the graph reads (get_attr) that are neither parameters nor buffers and sit on meta: constants the
    forward created on the capture device (e.g. the index tensor of `x[..., [-2], :]`), which hold no data."""
    tensors = {id(t) for t in [*gm.parameters(), *gm.buffers()]}
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = gm
            for part in str(node.target).split("."):
                value = getattr(value, part, None)
            if isinstance(value, torch.Tensor) and id(value) not in tensors and value.device.type == "meta":
                out[str(node.target)] = value
    return out


@contextlib.contextmanager
def _fake_cpu_weights(model: nn.Module):
    """Parameters and buffers as fake CPU tensors (no memory) while the context lasts: constants the forward
    creates next to them then land on CPU with their values, where on meta they would hold none."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    cpu = torch.device("cpu")
    saved = []
    for mod in model.modules():
        for store in (mod._parameters, mod._buffers):
            for name, t in list(store.items()):
                if t is not None and t.device.type == "meta":
                    saved.append((store, name, t))
                    fake = mode.fake_tensor_converter.from_meta_and_device(mode, t, cpu)
                    store[name] = nn.Parameter(fake, requires_grad=False) if store is mod._parameters else fake
    try:
        yield
    finally:
        for store, name, t in saved:
            store[name] = t


def _export(model: nn.Module, args: tuple, dynamic_shapes: tuple) -> Any:
    # deferred asserts: HF code that branches on sizes (e.g. torch 2.11 with mask building) must not turn into
    # guards that pin the dynamic dims
    return torch.export.export(model, args, dynamic_shapes=dynamic_shapes, strict=False,
                               prefer_deferred_runtime_asserts_over_guards=True)


@contextlib.contextmanager
def _recording_guards():
    """Remember how ep.module() built its `_guards_fn` (guard code strings and input paths), so the export cache can
    build the same module again: the function itself is exec'd code that cannot be pickled."""
    from torch.export import _unlift

    original = getattr(_unlift, "_convert_guards_code_to_fn", None)
    recipes: list = []
    if original is None:
        yield recipes
        return

    def convert(*args: Any) -> Any:
        recipes.append(args)
        return original(*args)

    _unlift._convert_guards_code_to_fn = convert
    try:
        yield recipes
    finally:
        _unlift._convert_guards_code_to_fn = original


def _module_of(ep: Any) -> fx.GraphModule:
    with _recording_guards() as recipes:
        gm = ep.module()
    guards = getattr(gm, "_guards_fn", None)
    if guards is not None and len(recipes) == 1:
        guards._ad_guards_recipe = recipes[0]
    return gm


def _recover_meta_constants(gm: fx.GraphModule, model: nn.Module, args: tuple, dynamic_shapes: tuple) -> None:
    """Give constants captured on meta their values: export once more with fake CPU weights (same trace, so the
    same constant names) and copy the values over where name, shape and dtype agree."""
    missing = _meta_constants(gm)
    if not missing:
        return
    with _fake_cpu_weights(model):
        constants = _export(model, example_inputs("cpu", *args[0].shape), dynamic_shapes).constants
    for name, old in missing.items():
        new = constants.get(name)
        if isinstance(new, torch.Tensor) and not isinstance(new, torch._subclasses.FakeTensor) \
                and new.shape == old.shape and new.dtype == old.dtype:
            owner_name, _, leaf = name.rpartition(".")
            setattr(gm.get_submodule(owner_name) if owner_name else gm, leaf, new)


def _raise_if_too_long(error: Exception, max_seq_len: int) -> None:
    """torch.export found that the model only works up to N tokens (a learned position table, a mask buffer of N
    rows): say so in config words instead of a constraint-solver message."""
    import re

    from autodeploy_cli.errors import ADError

    m = re.search(r"input_ids'\]\.size\(\)\[1\] <= (\d+)", str(error))
    if m is None or "Constraints violated (seq)" not in str(error):
        return
    limit = int(m.group(1))
    raise ADError(
        f"The model takes at most {limit} tokens per sequence (its position table or mask buffer has {limit} "
        f"positions: max_position_embeddings / n_positions in its config), but max_seq_len is {max_seq_len}. Set "
        f"`max_seq_len={limit}` (or lower).") from None


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
        try:
            gm = _module_of(_export(model, args, dynamic_shapes))
        except Exception as e:  # noqa: BLE001 - a length the model cannot take becomes a config error
            _raise_if_too_long(e, max_seq_len)
            raise
        _recover_meta_constants(gm, model, args, dynamic_shapes)
    return _flatten_codegen(gm)


def graph_input_names(gm: fx.GraphModule) -> list[str]:
    return [n.name for n in gm.graph.nodes if n.op == "placeholder"]


def run_graph(gm: nn.Module, *args: Any) -> Any:
    with torch.no_grad():
        return gm(*args)
