"""What the machine and the model are: copy bandwidth, bytes a decode step must move, peak memory, versions."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import torch

CPU_MEMORY_NOTE = "CPU run: there is no GPU memory to report"
CPU_BANDWIDTH_NOTE = "CPU run: the copy bandwidth (and so the decode floor) is measured on CUDA devices only"
_PACKAGES = ("autodeploy-cli", "torch", "transformers", "triton", "flashinfer-python", "typer", "rich", "omegaconf")
_KV_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}


def routed_experts(model: torch.nn.Module, cfg: Any) -> Optional[dict[str, Any]]:
    """The routed experts of a HF MoE model: their total bytes, the expert count and top-k (None for dense models).
    An experts module is one whose parameters lead with the expert count (transformers' stacked gate_up_proj /
    down_proj and their biases) or a ModuleList of that many experts; shared experts are dense weights."""
    num = next((int(v) for a in ("num_local_experts", "num_experts", "n_routed_experts")
                if isinstance(v := getattr(cfg, a, None), int) and v > 1), 0)
    top_k = getattr(cfg, "num_experts_per_tok", None)
    if not num or not isinstance(top_k, int):
        return None
    seen: set[int] = set()
    routed = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "experts":  # not shared_experts / shared_expert: those run for every token
            continue
        stacked = isinstance(module, torch.nn.ModuleList) and len(module) == num
        for p in module.parameters():
            if id(p) not in seen and (stacked or (p.dim() >= 2 and p.shape[0] == num)):
                seen.add(id(p))
                routed += p.numel() * p.element_size()
    return {"routed_expert_bytes": routed, "num_experts": num, "experts_per_token": int(top_k)} if routed else None


def model_bytes(factory: Any) -> dict[str, Any]:
    """Bytes one decode step must read: every weight except the embedding table (a gather of one row per token;
    read in full when tied to the LM head), and the KV-cache bytes per cached token over all layers. MoE: only the
    experts a step touches (`moe`; weight_bytes_per_decode_step is then the batch-1 value, top-k of E)."""
    model = factory.build_meta_model()
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in unique.values())
    fp8_saved = _fp8_saving(model, factory.quant_scheme())
    total -= fp8_saved
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and emb is not None and head.weight is emb.weight
    emb_bytes = emb.weight.numel() * emb.weight.element_size() if emb is not None else 0
    from autodeploy_cli.models.hf_arch import kv_values_per_token

    hf = factory.hf_config()
    text = getattr(hf, "get_text_config", lambda: hf)()
    kv_values, _ = kv_values_per_token(hf)  # MLA: the compressed latent + RoPE key per layer
    kv_dtype = factory.kv_cache_dtype()  # `auto` is fp8 for a checkpoint with an FP8 KV cache
    kv_elem = _KV_DTYPE_BYTES.get(kv_dtype) or torch.empty((), dtype=factory.model_dtype()).element_size()
    per_step = total if tied else total - emb_bytes
    moe = routed_experts(model, text)
    if moe is not None:
        moe["dense_weight_bytes_per_decode_step"] = per_step - moe["routed_expert_bytes"]
        per_step = moe["dense_weight_bytes_per_decode_step"] + moe["routed_expert_bytes"] * min(
            moe["experts_per_token"], moe["num_experts"]) // moe["num_experts"]
    return {
        "parameters": sum(p.numel() for p in unique.values()),
        "weight_bytes": total,
        "embedding_bytes": emb_bytes,
        "tied_embeddings": tied,
        "weight_bytes_per_decode_step": per_step,
        "moe": moe,
        "kv_bytes_per_token": kv_values * kv_elem,
        "dtype": str(factory.model_dtype()).replace("torch.", ""),
        "quantization": factory.quant_scheme().describe() if factory.quant_scheme() is not None else None,
        "fp8_weight_bytes_saved": fp8_saved,
    }


def _fp8_saving(model: Any, scheme: Any) -> int:
    """Bytes FP8 saves against the model dtype: the weights of the linear layers the quant scheme covers (not the LM
    head or anything tied to the embeddings, not the excluded modules) at one byte per element."""
    if scheme is None:
        return 0
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    saved = 0
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(mod, torch.nn.Linear) or w is None or mod is head or (emb is not None and w is emb.weight):
            continue
        if scheme.excludes(name):
            continue
        saved += w.numel() * (w.element_size() - 1)
    return saved


def cache_bytes(iface: Any) -> dict[str, int]:
    """The built model's cache facts: KV bytes per cached token (the layers that have a KV cache: attention layers
    only in a hybrid) and state-slot bytes per sequence (SSM / conv / delta-rule states, read every decode step)."""
    return {"kv_bytes_per_token": iface.bytes_per_page() // max(1, iface.page_size),
            "state_bytes_per_seq": iface.bytes_per_slot()}


def measure_copy_bandwidth(device: torch.device, max_bytes: int = 1 << 30, reps: int = 20) -> tuple[Optional[float], str]:
    """Device-to-device copy rate in bytes/s, counting read + write (None with a reason on CPU)."""
    if device.type != "cuda":
        return None, CPU_BANDWIDTH_NOTE
    free, _ = torch.cuda.mem_get_info(device)
    nbytes = max(min(max_bytes, free // 8) // 4096 * 4096, 4096)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(reps):
        dst.copy_(src)
    end.record()
    end.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / reps
    del src, dst
    free_device_memory(device)
    return 2 * nbytes / seconds, f"torch copy_ of {nbytes / 2**20:.0f} MiB, {reps} reps, read+write bytes"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> tuple[Optional[int], str]:
    if device.type != "cuda":
        return None, CPU_MEMORY_NOTE
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated (weights + KV cache + activations)"


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _driver_version() -> Optional[str]:
    try:
        import pynvml  # nvidia-ml-py, when installed

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - fall back to nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, GPU, driver and git commit: what it takes to reproduce and compare a result later."""
    repo = Path(__file__).resolve().parents[2]
    commit = _git(["rev-parse", "HEAD"], repo)
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo) if commit else None
    gpu = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "torch_cuda": torch.version.cuda,
        "device": str(device),
        "gpu_name": gpu.name if gpu else None,
        "gpu_memory_gib": gpu.total_memory / 2**30 if gpu else None,
        "gpu_count": torch.cuda.device_count() if gpu else 0,
        "gpu_driver": _driver_version() if gpu else None,
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
    }
