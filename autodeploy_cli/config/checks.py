"""The cheap checks of a resolved config that need no torch: where the model is, limits in range, paths.

`ad <cmd> --print-config` runs them and exits non-zero on what the build would reject; the build runs them first,
so a bad value fails in well under a second instead of deep inside the pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autodeploy_cli.errors import ADError, did_you_mean


def resolve_model_source(model: str) -> str:
    """A local folder (absolute), a registry entry's shipped folder, or the hub id as given; ADError otherwise."""
    from model_registry import get_entry, load_registry, local_model_dir

    local = local_model_dir(model)
    if local is not None:
        return str(local)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ADError(f"`model: {model}` is a file, not a folder. Point `model` at a Hugging Face model folder "
                          "(config.json, *.safetensors, tokenizer files), a hub id, or a model-registry name.")
        if not (path / "config.json").is_file():
            raise ADError(
                f"`model: {model}` is a folder without a config.json. Point `model` at a Hugging Face model "
                "folder (config.json, *.safetensors, tokenizer files), a hub id, or a model-registry name."
            )
        return str(path.resolve())
    if get_entry(model) is None and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise ADError(
            f"Unknown model `{model}`: it is not a local folder, not a model-registry name and not a hub id of "
            f"the form `org/name`.{did_you_mean(model, load_registry())} Pass a local HF folder "
            "(`model=/path/to/hf_dir`), a hub id, or a registry name (`ad models` lists them)."
        )
    return model


# key -> (lowest allowed, what it is): every limit the runtime sizes buffers from
_AT_LEAST_ONE = ("max_seq_len", "max_batch_size", "attn_page_size", "world_size")


def check_config(cfg: Any) -> None:
    """Everything a build would reject that can be known from the config alone (raises ADError)."""
    for key in _AT_LEAST_ONE:
        if getattr(cfg, key) < 1:
            raise ADError(f"`{key}` must be at least 1, got {getattr(cfg, key)}.")
    if cfg.max_num_tokens is not None and cfg.max_num_tokens < 1:
        raise ADError(f"`max_num_tokens` must be at least 1 (or null for the default), got {cfg.max_num_tokens}.")
    frac = (cfg.transforms.get("resize_kv_cache") or {}).get("free_gpu_memory_fraction")
    if frac is not None and not 0 <= frac <= 1:
        raise ADError(f"`kv_cache_config.free_gpu_memory_fraction` must be within [0, 1], got {frac}.")
    sp = cfg.prompt.sp_kwargs
    if sp.max_tokens < 1:
        raise ADError(f"`prompt.sp_kwargs.max_tokens` must be at least 1, got {sp.max_tokens}.")
    if sp.temperature < 0 or not 0 < sp.top_p <= 1 or (sp.top_k is not None and sp.top_k < 0):
        raise ADError("`prompt.sp_kwargs` needs temperature >= 0 (0 = greedy), top_p in (0, 1] and top_k >= 0 "
                      f"(or null); got temperature {sp.temperature}, top_p {sp.top_p}, top_k {sp.top_k}.")
    resolve_model_source(cfg.model)
    if cfg.tokenizer:
        tok = Path(cfg.tokenizer).expanduser()
        if cfg.tokenizer.startswith((".", "/", "~")) and not tok.is_dir():
            raise ADError(f"`tokenizer: {cfg.tokenizer}` is not a folder. Point it at a folder with the tokenizer "
                          "files or at a hub id, or drop it to use the model's own tokenizer.")


def output_path(path: str | Path, flag: str, overwrite: bool = True) -> Path:
    """Where a command may write its result file, checked before the work starts: not a directory, its folder
    created, writable. With `overwrite=False` an existing file is kept and the next free numbered name is used
    (`bench.json` -> `bench.1.json`)."""
    import os

    p = Path(path).expanduser()
    if p.is_dir():
        raise ADError(f"`{flag} {path}` is a directory; give a file path (e.g. `{flag} {Path(path) / 'result.json'}`).")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ADError(f"Cannot create the folder `{p.parent}` for `{flag}`: {e.strerror}. Pick a writable path.") from None
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ADError(f"Cannot write `{path}` (`{flag}`): permission denied. Pick a writable file path.")
    if p.exists() and not overwrite:
        n = 1
        while p.with_name(f"{p.stem}.{n}{p.suffix}").exists():
            n += 1
        p = p.with_name(f"{p.stem}.{n}{p.suffix}")
    return p
