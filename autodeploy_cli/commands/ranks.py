"""Running a command on `world_size` ranks: the checks that come before anything is built, then the launch.

Rank 0 runs the command (`leader`); every other rank follows rank 0's builds and steps (`autodeploy_cli.llm.follow`).
"""

from __future__ import annotations

from typing import Callable, Optional, TypeVar

from autodeploy_cli.config.schema import ADConfig

T = TypeVar("T")


def effective_world_size(cfg: ADConfig) -> int:
    from autodeploy_cli.distributed.launch import joined_env

    env = joined_env()
    return env["world_size"] if env is not None and env["world_size"] > 1 else cfg.world_size


def check_model(cfg: ADConfig, world_size: int) -> None:
    """A world size the model's heads / features / experts do not split over fails here, listing the valid ones."""
    if world_size <= 1 or (cfg.transforms.get("detect_sharding") or {}).get("enabled", True) is False:
        return
    from autodeploy_cli.models.factory import ModelFactory
    from autodeploy_cli.models.tp_limits import check_world_size

    check_world_size(ModelFactory(cfg).hf_config(), world_size, f"`{cfg.model}`")


def on_ranks(cfg: ADConfig, leader: Callable[[], T]) -> Optional[T]:
    """`leader()` on rank 0 of `cfg.world_size` ranks (spawned here, or joined from torchrun); None on the others."""
    world_size = effective_world_size(cfg)
    if world_size <= 1:
        return leader()
    check_model(cfg, world_size)
    from autodeploy_cli.distributed import launch
    from autodeploy_cli.llm import follow

    return launch.run(cfg, leader, follow)
