"""Which world sizes a model's config can be sharded over (checked before anything is built).

Tensor parallelism splits attention by heads and MLPs by their intermediate features; KV heads split too, or are
replicated over rank groups when there are fewer of them than ranks (the rank count must then be a multiple of
them). MoE experts are spread over the ranks (EP, any count at least the rank count); with fewer experts than ranks
every expert is split instead, so its intermediate size must divide.
"""

from __future__ import annotations

from typing import Any, Callable

from autodeploy_cli.errors import ADError

MAX_LISTED = 64


def _num_experts(cfg: Any) -> int:
    for key in ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def constraints(hf_config: Any) -> list[tuple[str, Callable[[int], bool]]]:
    """(what must split, test(world_size)) for the text model of `hf_config`."""
    cfg = getattr(hf_config, "get_text_config", lambda: hf_config)()
    out: list[tuple[str, Callable[[int], bool]]] = []
    heads = getattr(cfg, "num_attention_heads", None)
    if isinstance(heads, int) and heads > 0:
        out.append((f"num_attention_heads={heads} (attention is split by heads)", lambda ws: heads % ws == 0))
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        out.append((f"num_key_value_heads={kv} (split, or replicated when there are fewer than ranks)",
                    lambda ws: kv % ws == 0 or ws % kv == 0))
    experts = _num_experts(cfg)
    if experts:
        inter = getattr(cfg, "moe_intermediate_size", None) or getattr(cfg, "intermediate_size", None)
        if isinstance(inter, int):
            out.append((f"{experts} experts of intermediate size {inter} (fewer experts than ranks split every expert)",
                        lambda ws: experts >= ws or inter % ws == 0))
        shared = getattr(cfg, "shared_expert_intermediate_size", None)
        if isinstance(shared, int) and shared > 0:
            out.append((f"shared_expert_intermediate_size={shared}", lambda ws: shared % ws == 0))
    else:
        inter = getattr(cfg, "intermediate_size", None)
        if isinstance(inter, int) and inter > 0:
            out.append((f"intermediate_size={inter} (the MLP is split by features)", lambda ws: inter % ws == 0))
    return out


def valid_world_sizes(hf_config: Any, limit: int = MAX_LISTED) -> list[int]:
    rules = constraints(hf_config)
    return [ws for ws in range(1, limit + 1) if all(ok(ws) for _, ok in rules)]


def check_world_size(hf_config: Any, world_size: int, model: str = "the model") -> None:
    """ADError naming what does not split over `world_size` ranks and the world sizes that work."""
    if world_size <= 1:
        return
    failed = [what for what, ok in constraints(hf_config) if not ok(world_size)]
    if not failed:
        return
    valid = valid_world_sizes(hf_config)
    raise ADError(
        f"`world_size: {world_size}` does not fit {model}: {'; '.join(failed)} cannot be split over {world_size} "
        f"ranks. Valid world sizes for this model: {', '.join(map(str, valid))}. Pick one of them, or disable "
        "`transforms.detect_sharding` to run the whole model on every rank.")
