"""The exported GraphModule as plain picklable data, and back: for the on-disk export cache (`export/cache.py`).

torch.export.save/load round-trips too, but re-parses every symbolic size with sympy's parser (slower than
exporting the 8B graph again). Here the graph is kept as nodes (op, name, target by qualified name, args with node
references), the few meta keys the transforms read, the fake values as (sizes, strides, dtype, device) over the
pickled ShapeEnv of the export, and the module's parameters, buffers and constants (meta tensors hold no data).

Loading makes one meta tensor per distinct (sizes, strides, dtype, device) and gives each node a fake tensor over a
detached alias of it: creating fake tensors with symbolic sizes costs ~1 ms each (sympy), aliases ~20 us. The
aliasing is a superset of the export's (views share storage there too); nothing downstream reads storage identity
of meta values.

Anything this format does not know (higher-order ops with subgraphs, unbacked symbols, other module types, arguments
of unknown types) raises NotSerializable when writing: such a graph is exported each time, never cached half-right.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx, nn

FORMAT = 1  # bump when the payload layout changes
_META_KEYS = ("nn_module_stack", "stack_trace", "torch_fn", "custom", "eager_input_vals")
_LEAF_TYPES = (int, float, bool, str, type(None), complex, torch.dtype, torch.device, torch.layout,
               torch.memory_format, type(Ellipsis))


class NotSerializable(Exception):
    """The graph holds something this format cannot write faithfully."""


@dataclass(frozen=True)
class _Ref:
    index: int  # a node, by position in the graph


@dataclass(frozen=True)
class _Op:
    qualname: str  # e.g. aten::add
    overload: Optional[str]  # None: the OpOverloadPacket


@dataclass(frozen=True)
class _Fn:
    module: str
    qualname: str


@dataclass(frozen=True)
class _Sym:
    kind: str  # int | bool | float
    expr: Any  # sympy expression over the ShapeEnv's symbols
    hint: Any


@dataclass(frozen=True)
class _Fake:
    size: tuple
    stride: tuple
    offset: Any
    dtype: torch.dtype
    device: str
    requires_grad: bool


def _encode_target(target: Any) -> Any:
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverload):
        return _Op(target._schema.name, target._overloadname)
    if isinstance(target, torch._ops.OpOverloadPacket):
        return _Op(target._qualified_op_name, None)
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if module and qualname and "<" not in qualname:
        fn = _Fn(module, qualname)
        try:
            if _decode_target(fn) is target:
                return fn
        except (ImportError, AttributeError):
            pass
    raise NotSerializable(f"call target {target!r} has no importable name")


def _decode_target(t: Any) -> Any:
    if isinstance(t, str):
        return t
    if isinstance(t, _Op):
        ns, name = t.qualname.split("::")
        packet = getattr(getattr(torch.ops, ns), name)
        return packet if t.overload is None else getattr(packet, t.overload)
    obj: Any = importlib.import_module(t.module)
    for part in t.qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _encode_sym(s: Any) -> _Sym:
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    expr = s.node.expr
    if free_unbacked_symbols(expr):
        raise NotSerializable(f"data-dependent (unbacked) size {expr}")
    kind = {torch.SymInt: "int", torch.SymBool: "bool", torch.SymFloat: "float"}[type(s)]
    return _Sym(kind, expr, getattr(s.node, "_hint", None))


def _encode_fake(t: torch.Tensor) -> _Fake:
    from torch._subclasses.fake_tensor import FakeTensor

    if type(t) is not FakeTensor or t.layout != torch.strided or t.is_quantized:
        raise NotSerializable(f"meta value of type {type(t).__name__} ({t.layout})")
    dim = lambda x: _encode_sym(x) if isinstance(x, torch.SymInt) else int(x)  # noqa: E731
    return _Fake(tuple(map(dim, t.shape)), tuple(map(dim, t.stride())), dim(t.storage_offset()), t.dtype,
                 str(t.device), t.requires_grad)


def encode(value: Any, nodes: dict[fx.Node, int]) -> Any:
    """Arguments and meta values as plain data: nodes -> _Ref, fake tensors -> _Fake, symbolic values -> _Sym."""
    if isinstance(value, fx.Node):
        return _Ref(nodes[value])
    if isinstance(value, torch.Tensor):
        return _encode_fake(value)
    if isinstance(value, (torch.SymInt, torch.SymBool, torch.SymFloat)):
        return _encode_sym(value)
    if isinstance(value, _LEAF_TYPES):
        return value
    if isinstance(value, slice):
        return slice(encode(value.start, nodes), encode(value.stop, nodes), encode(value.step, nodes))
    if isinstance(value, (tuple, list)):
        items = [encode(v, nodes) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {k: encode(v, nodes) for k, v in value.items()}
    raise NotSerializable(f"value of type {type(value).__name__}")


def _encode_meta(node: fx.Node, index: dict[fx.Node, int]) -> dict:
    meta = {"val": encode(node.meta.get("val"), index)} if "val" in node.meta else {}
    for key in _META_KEYS:
        if key in node.meta:
            try:
                meta[key] = encode(node.meta[key], index)
            except NotSerializable:
                if key in ("nn_module_stack", "stack_trace"):  # read by the transforms: required
                    raise
    return meta


@dataclass(frozen=True)
class _Live:
    """A parameter or buffer with data, too big to store: loading takes it from the live model (same name)."""

    shape: tuple
    dtype: torch.dtype


_SMALL = 1 << 20  # bytes of a real (non-meta) weight stored in the entry; larger ones come from the live model
_MAX_CONSTANT = 64 << 20


def _stored(t: Optional[torch.Tensor]) -> Any:
    if t is None or t.device.type == "meta" or t.numel() * t.element_size() <= _SMALL:
        return t
    return _Live(tuple(t.shape), t.dtype)


def _module_state(gm: fx.GraphModule) -> list[dict]:
    """Per submodule (named_modules order): its parameters, buffers (persistence) and tensor attributes."""
    plain = set(nn.Module().__dict__)
    out = []
    for path, mod in gm.named_modules():
        guards = getattr(mod, "_ad_guards_recipe", None) if path == "_guards_fn" else None
        if path and type(mod) is not nn.Module and guards is None:
            raise NotSerializable(f"submodule {path} of type {type(mod).__name__}")
        if any(getattr(mod, h) for h in ("_forward_hooks", "_forward_pre_hooks")):
            raise NotSerializable(f"hooks on submodule {path or '<root>'}")
        extra = [k for k in mod.__dict__ if k not in plain]
        if path and guards is None and any(not isinstance(mod.__dict__[k], torch.Tensor) for k in extra):
            raise NotSerializable(f"non-tensor attributes on submodule {path}")
        attrs = [(k, mod.__dict__[k]) for k in extra if isinstance(mod.__dict__[k], torch.Tensor)]
        if any(t.device.type != "meta" and t.numel() * t.element_size() > _MAX_CONSTANT for _, t in attrs):
            raise NotSerializable(f"a constant of more than {_MAX_CONSTANT >> 20} MB on submodule {path}")
        out.append(dict(
            path=path, guards=guards, training=mod.training, attrs=attrs,
            params=[(k, _stored(v)) for k, v in mod._parameters.items()],
            buffers=[(k, _stored(v), k not in mod._non_persistent_buffers_set) for k, v in mod._buffers.items()]))
    return out


def _shape_env(gm: fx.GraphModule) -> Any:
    from torch._guards import detect_fake_mode

    vals = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    mode = detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
    if mode is None or mode.shape_env is None:
        raise NotSerializable("the graph inputs carry no fake values")
    env = {k: v for k, v in mode.shape_env.__dict__.items() if k not in ("tracked_fakes", "fake_tensor_cache")}
    return env, {"allow_non_fake_inputs": mode.allow_non_fake_inputs}


def dump_graph(gm: fx.GraphModule) -> dict:
    """The plain-data payload of an exported, flattened GraphModule (see the module docstring)."""
    if type(gm.graph._codegen) is not fx.graph.CodeGen:
        raise NotSerializable("the graph has a pytree codegen")
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    nodes = [(n.op, n.name, _encode_target(n.target), encode(n.args, index), encode(n.kwargs, index),
              _encode_meta(n, index)) for n in gm.graph.nodes]
    env, mode = _shape_env(gm)
    return {"format": FORMAT, "nodes": nodes, "modules": _module_state(gm), "shape_env": env, "fake_mode": mode}


class _Decoder:
    """Rebuilds values in one fresh FakeTensorMode over the saved ShapeEnv; memoizes symbols and meta tensors."""

    def __init__(self, env_state: dict, mode_state: dict):
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        env = ShapeEnv()
        for k, v in env_state.items():
            setattr(env, k, v)
        self.env = env
        self.mode = FakeTensorMode(shape_env=env, **mode_state)
        self.syms: dict = {}
        self.templates: dict = {}
        self.nodes: list[fx.Node] = []

    def sym(self, s: _Sym) -> Any:
        key = (s.kind, s.expr)
        if key not in self.syms:
            if s.kind == "int":
                self.syms[key] = self.env.create_symintnode(s.expr, hint=s.hint)
            elif s.kind == "bool":
                self.syms[key] = self.env.create_symboolnode(s.expr)
            else:
                self.syms[key] = self.env.create_symfloatnode(s.expr, hint=s.hint)
        return self.syms[key]

    def _template(self, f: _Fake) -> torch.Tensor:
        from torch.utils._mode_utils import no_dispatch

        key = (f.size, f.stride, f.offset, f.dtype)
        if key not in self.templates:
            dim = lambda x: self.sym(x) if isinstance(x, _Sym) else x  # noqa: E731
            size, stride, offset = [dim(x) for x in f.size], [dim(x) for x in f.stride], dim(f.offset)
            with no_dispatch():
                if isinstance(offset, int) and offset == 0:
                    t = torch.empty_strided(size, stride, dtype=f.dtype, device="meta")
                else:  # a view into a larger storage
                    extent = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
                    t = torch.empty(extent, dtype=f.dtype, device="meta").as_strided(size, stride, offset)
            self.templates[key] = t
        return self.templates[key]

    def fake(self, f: _Fake) -> torch.Tensor:
        from torch._subclasses.fake_tensor import FakeTensor
        from torch.utils._mode_utils import no_dispatch

        with no_dispatch():
            elem = self._template(f).detach().requires_grad_(f.requires_grad)
        return FakeTensor(self.mode, elem, torch.device(f.device))

    def value(self, v: Any) -> Any:
        if isinstance(v, _Ref):
            return self.nodes[v.index]
        if isinstance(v, _Fake):
            return self.fake(v)
        if isinstance(v, _Sym):
            return self.sym(v)
        if isinstance(v, slice):
            return slice(self.value(v.start), self.value(v.stop), self.value(v.step))
        if isinstance(v, (tuple, list)):
            items = [self.value(x) for x in v]
            return tuple(items) if isinstance(v, tuple) else items
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        return v


def _submodule(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split(".") if path else []:
        if part not in mod._modules:
            mod.add_module(part, nn.Module())
        mod = mod._modules[part]  # type: ignore[assignment]
    return mod


def _install_state(gm: fx.GraphModule, modules: list[dict], live: dict[str, torch.Tensor]) -> None:
    """Recreate submodules, parameters, buffers and constants; tensors of the live model are used where the name,
    shape and dtype agree (the export's graph holds the model's own parameter objects)."""
    from torch.export._unlift import _convert_guards_code_to_fn

    def pick(path: str, name: str, saved: Any) -> Any:
        t = live.get(f"{path}.{name}" if path else name)
        if isinstance(saved, _Live):
            if t is None or tuple(t.shape) != saved.shape or t.dtype != saved.dtype:
                raise ValueError(f"{path}.{name}: the live model has no matching tensor")
            return t
        same = t is not None and type(t) is type(saved) and t.shape == saved.shape and t.dtype == saved.dtype \
            and t.device == saved.device
        return t if same else saved

    for m in modules:
        path = m["path"]
        if m["guards"] is not None:
            gm.add_module(path, _convert_guards_code_to_fn(*m["guards"]))
            gm.get_submodule(path)._ad_guards_recipe = m["guards"]
            continue
        mod = _submodule(gm, path)
        mod.training = m["training"]
        for name, t in m["params"]:
            mod.register_parameter(name, pick(path, name, t) if t is not None else None)
        for name, t, persistent in m["buffers"]:
            mod.register_buffer(name, pick(path, name, t) if t is not None else None, persistent=persistent)
        for name, t in m["attrs"]:
            setattr(mod, name, t)


def load_graph(payload: dict, live: Optional[dict[str, torch.Tensor]] = None) -> fx.GraphModule:
    """The GraphModule `dump_graph` wrote. Raises (any exception) on a payload it cannot rebuild."""
    from autodeploy_cli.ops import load_ops

    if payload.get("format") != FORMAT:
        raise ValueError(f"export cache format {payload.get('format')} != {FORMAT}")
    load_ops()  # the canonical ops the graph calls (a fresh process has not registered them yet)
    dec = _Decoder(payload["shape_env"], payload["fake_mode"])
    graph = fx.Graph()
    for op, name, target, args, kwargs, meta in payload["nodes"]:
        node = graph.create_node(op, _decode_target(target), dec.value(args), dec.value(kwargs), name)
        if node.name != name:
            raise ValueError(f"node name {name} came back as {node.name}")
        node.meta = {k: dec.value(v) for k, v in meta.items()}
        dec.nodes.append(node)
    gm = fx.GraphModule(nn.Module(), fx.Graph())
    _install_state(gm, payload["modules"], live or {})
    gm.graph = graph  # recompiles
    graph.lint()
    return gm
