"""On-disk cache of exported graphs: torch.export of an 8B model takes seconds; loading its graph takes a fraction.

An entry is keyed by everything that determines the exported graph:
  * the model: class (and a hash of the file defining it: remote code), its full HF config (after model_kwargs),
    every parameter/buffer name with shape, dtype and device, and the module tree;
  * the export: max_batch_size / max_seq_len (the dynamic-dim ranges), the patch toggles and each registered
    patch's source file, torch's default dtype;
  * the code: Python, torch, transformers and `ad` versions and a hash of our export, ops and models sources.

Files live in `<cache_dir>/export/<key>.adx`: 8-byte magic, the SHA-256 of the body, the body (torch.save of the
payload). A file that does not verify, does not load, or holds another key is a miss (the entry is rebuilt), never
a wrong graph. Files are pickles: keep the cache folder private to the user (it is, under ~/.cache by default).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Optional

import torch
from torch import fx, nn

CACHE_DIR_ENV = "AD_CACHE_DIR"
_MAGIC = b"ADXCACHE"
# our sources that decide what export produces: capture + patches, canonical ops (their fake kernels give the
# meta values), the model factory
_SOURCE_DIRS = ("export", "ops", "models")


def cache_root(option: Optional[str] = None) -> Path:
    """The cache folder: the option, else $AD_CACHE_DIR, else ~/.cache/autodeploy."""
    return Path(option or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "autodeploy").expanduser()


def _file_hash(path: Optional[str]) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else ""  # type: ignore[arg-type]
    except OSError:
        return ""


def _sources_hash() -> str:
    root = Path(__file__).resolve().parents[1]  # the autodeploy_cli package
    h = hashlib.sha256()
    for sub in _SOURCE_DIRS:
        for f in sorted((root / sub).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    h.update(_file_hash(str(root.parent / "transforms" / "export_to_gm.py")).encode())
    return h.hexdigest()


def _versions() -> dict:
    import transformers

    try:
        from importlib.metadata import version

        ours = version("autodeploy-cli")
    except Exception:  # noqa: BLE001 - not installed as a distribution (a source checkout)
        ours = "source"
    return {"python": sys.version, "torch": torch.__version__, "transformers": transformers.__version__, "ad": ours}


def _model_facts(model: nn.Module) -> dict:
    import inspect

    cls = type(model)
    try:
        cls_file = inspect.getsourcefile(cls)
    except TypeError:
        cls_file = None
    config = getattr(model, "config", None)
    # where the config was read from does not shape the graph (the same config in another folder is a hit)
    fields = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "_commit_hash")} \
        if config is not None else {}
    config_json = json.dumps(fields, sort_keys=True, default=str)
    tensors = [(n, tuple(t.shape), str(t.dtype), str(t.device), isinstance(t, nn.Parameter))
               for n, t in [*model.named_parameters(remove_duplicate=False),
                            *model.named_buffers(remove_duplicate=False)]]
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "class_file": _file_hash(cls_file),
            "config": config_json, "attn_impl": str(getattr(config, "_attn_implementation", None)),
            "tensors": tensors, "modules": [(n, type(m).__qualname__) for n, m in model.named_modules()]}


def _const_repr(c: object) -> str:
    """A process-independent text of a code constant (sets sorted: string hashing is randomized per process)."""
    if isinstance(c, (tuple, list)):
        return "(" + ",".join(_const_repr(x) for x in c) + ")"
    if isinstance(c, frozenset):
        return "{" + ",".join(sorted(_const_repr(x) for x in c)) + "}"
    if hasattr(c, "co_code"):
        return _code_digest(c)
    return repr(c)


def _code_digest(code: object) -> str:
    # not marshal.dumps: its output depends on reference counts (FLAG_REF), so it differs between processes
    parts = [code.co_code.hex(), repr(code.co_names), repr(code.co_freevars), _const_repr(code.co_consts)]  # type: ignore[attr-defined]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _code_hash(fn: object, memo: dict) -> str:
    """A digest of a function's code (nested code objects included); the type name for other callables."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return type(fn).__qualname__
    if id(code) not in memo:
        memo[id(code)] = _code_digest(code)
    return memo[id(code)]


def _code_facts(model: nn.Module) -> list:
    """The code export runs, as bound now: each module's forward (class or instance override) and hooks, and every
    function and class method of the modules defining the classes. A monkeypatched forward or helper (a test, a
    user's fix) changes the graph without changing any file or config."""
    import inspect

    memo: dict = {}
    out, modules_seen, classes_seen = [], set(), set()
    for name, mod in model.named_modules():
        hooks = [*mod._forward_pre_hooks.values(), *mod._forward_hooks.values()]
        own = mod.__dict__.get("forward")
        if own is not None or hooks:
            out.append((name, _code_hash(own, memo) if own else "", [_code_hash(h, memo) for h in hooks]))
        for cls in type(mod).__mro__:
            if cls in classes_seen or cls.__module__.startswith("torch."):
                continue
            classes_seen.add(cls)
            modules_seen.add(cls.__module__)
    for mod_name in sorted(modules_seen):
        namespace = vars(sys.modules[mod_name]) if mod_name in sys.modules else {}
        for key, obj in sorted(namespace.items()):
            if inspect.isfunction(obj):
                out.append((mod_name, key, _code_hash(obj, memo)))
            elif inspect.isclass(obj) and obj.__module__ == mod_name:
                out += [(mod_name, f"{key}.{k}", _code_hash(v, memo)) for k, v in sorted(vars(obj).items())
                        if inspect.isfunction(v)]
    return out


def _patch_facts(toggles: dict[str, bool]) -> dict:
    import inspect

    from autodeploy_cli.export import patches

    registered = patches.registered_factories()
    files = {}
    for name, fn in registered.items():
        try:
            files[name] = _file_hash(inspect.getsourcefile(inspect.unwrap(fn)))
        except TypeError:
            files[name] = repr(fn)
    return {"toggles": sorted(toggles.items()), "registered": files}


def export_key(model: nn.Module, max_batch_size: int, max_seq_len: int, toggles: dict[str, bool]) -> str:
    """The cache key (hex SHA-256) of exporting `model` with these settings (see the module docstring)."""
    from autodeploy_cli.export.serialize import FORMAT

    facts = {"format": FORMAT, "versions": _versions(), "sources": _sources_hash(), "model": _model_facts(model), "code": _code_facts(model),
             "patches": _patch_facts(toggles), "dims": [max_batch_size, max_seq_len],
             "default_dtype": str(torch.get_default_dtype())}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


class ExportCache:
    """Reads and writes entries under `root/export/`; every failure is a logged miss, never an error."""

    def __init__(self, root: Path):
        self.dir = Path(root) / "export"

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.adx"

    def load(self, key: str, live: dict[str, torch.Tensor]) -> Optional[tuple[fx.GraphModule, dict]]:
        """(graph, facts) of the entry, or None: missing, corrupt (deleted) or stale."""
        from autodeploy_cli.export.serialize import load_graph
        from autodeploy_cli.log import get_logger

        path = self.path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        try:
            body = blob[len(_MAGIC) + 32:]
            if blob[:len(_MAGIC)] != _MAGIC or hashlib.sha256(body).digest() != blob[len(_MAGIC):len(_MAGIC) + 32]:
                raise ValueError("checksum mismatch (truncated or corrupted file)")
            entry = torch.load(io.BytesIO(body), weights_only=False)
            if entry.get("key") != key:
                raise ValueError("the entry holds another key")
            gm = load_graph(entry["graph"], live)
        except Exception as e:  # noqa: BLE001 - any unreadable entry is rebuilt
            get_logger().warning(f"export cache: ignoring unreadable entry {path} ({type(e).__name__}: {e}); "
                                 "exporting again")
            path.unlink(missing_ok=True)
            return None
        return gm, entry.get("facts", {})

    def save(self, key: str, gm: fx.GraphModule, facts: dict) -> Optional[str]:
        """Write the entry (atomically); None when written, else why not (the graph stays usable)."""
        from autodeploy_cli.export.serialize import NotSerializable, dump_graph
        from autodeploy_cli.log import get_logger

        try:
            payload = dump_graph(gm)
        except NotSerializable as e:
            return f"not cacheable: {e}"
        buf = io.BytesIO()
        torch.save({"key": key, "facts": facts, "graph": payload}, buf, pickle_protocol=4)
        body = buf.getvalue()
        path = self.path(key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(_MAGIC + hashlib.sha256(body).digest() + body)
            os.replace(tmp, path)  # readers see the old file or the whole new one
        except OSError as e:
            tmp.unlink(missing_ok=True)
            get_logger().warning(f"export cache: could not write {path} ({e}); the next build exports again")
            return f"not written: {e}"
        return None
