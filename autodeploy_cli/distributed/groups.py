"""The process groups of one run of `world_size` ranks, and the watchdog that ends every rank when one fails.

* device group: torch.distributed's default group (NCCL on CUDA, gloo on CPU); the graph's collectives
  (`auto_deploy::torch_dist_*`) run on it.
* CPU group: gloo; rank 0 broadcasts each step's batch over it (`broadcast.py`).
* failure board: a key in the rendezvous store. A rank that raises writes its message there; every other rank's
  watchdog thread polls the key twice a second and ends its process, rank 0 printing the failed rank's message.
  So one failure ends all ranks within about a second, whether the others are idle, in a collective or computing.

`init(...)` runs once per process (launch.py calls it); `state()` answers rank, world size and device afterwards.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch


def _attempt() -> str:
    """Keys of this launch attempt (torchelastic restarts reuse its store: old keys must not leak into new ranks)."""
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}.{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


ERROR_KEY = "ad_failure"
# device-group collectives wait this long for a slow rank (a rank that fails is caught by the watchdog long before)
DEFAULT_TIMEOUT_S = 1800
# the CPU group waits for rank 0's next step: a server may be idle for days
CPU_TIMEOUT = timedelta(days=30)


@dataclass(frozen=True)
class RankState:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Optional[torch.device] = None  # this rank's device (cuda:<local_rank> or cpu); None on one rank
    cpu_group: Any = None  # gloo group for host-side broadcasts


_STATE = RankState()
_BOARD: dict[str, Any] = {}  # "store": the store client the watchdog and failure reports use, "lock", "stop"


def state() -> RankState:
    return _STATE


def is_distributed() -> bool:
    return _STATE.world_size > 1


def timeout_s() -> float:
    return float(os.environ.get("AD_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def make_store(addr: str, port: int, world_size: int, is_master: bool) -> Any:
    """A TCP rendezvous store (port 0 on the master: the OS picks a free port, read it back from `.port`)."""
    import torch.distributed as dist

    return dist.TCPStore(addr, port, world_size if is_master else None, is_master,
                         timedelta(seconds=max(60.0, timeout_s())), wait_for_workers=False)


def init(rank: int, world_size: int, local_rank: int, store: Any, addr: str, port: int,
         device_type: str) -> RankState:
    """Join the run: device + CPU groups, this rank's device, and the failure watchdog."""
    global _STATE
    import torch.distributed as dist

    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, store=dist.PrefixStore(f"ad_pg.{_attempt()}", store), rank=rank,
                            world_size=world_size,
                            timeout=timedelta(seconds=timeout_s()))
    cpu_group = dist.new_group(backend="gloo", timeout=CPU_TIMEOUT)
    _STATE = RankState(rank, world_size, local_rank, device, cpu_group)
    # the watchdog gets its own store client: the store is not shared across threads
    board = dist.PrefixStore(f"ad_board.{_attempt()}", make_store(addr, port, world_size, False))
    _BOARD.update(store=board, lock=threading.Lock(), stop=threading.Event())
    threading.Thread(target=_watch, name="ad-rank-watchdog", daemon=True).start()
    return _STATE


def shutdown() -> None:
    """Leave the run (after a clean end; a failed run simply exits)."""
    global _STATE
    import torch.distributed as dist

    if "stop" in _BOARD:
        _BOARD["stop"].set()
    if dist.is_available() and dist.is_initialized():
        # every rank stops its watchdog before any leaves: the store may live in rank 0's process
        dist.barrier(group=_STATE.cpu_group)
        dist.destroy_process_group()
    _STATE = RankState()


def report_failure(message: str, exit_code: int) -> None:
    """Put this rank's failure on the board (the first report wins); every other rank ends within a second."""
    store = _BOARD.get("store")
    if store is None:
        return
    text = f"{_STATE.rank}\n{exit_code}\n{message}"
    try:
        with _BOARD["lock"]:
            store.compare_set(ERROR_KEY, "", text)
    except Exception:  # noqa: BLE001 - the store may be gone already (rank 0 exited); the others end anyway
        pass


def end_if_peer_failed(wait_s: float = 1.0) -> None:
    """When this rank's error only follows another rank's failure (a collective lost its peer), end with the
    other rank's message instead: it is the cause."""
    if "store" not in _BOARD:
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            found = _read_failure()
        except Exception:  # noqa: BLE001 - no store: nothing to learn
            return
        if found is not None and found[0] != _STATE.rank:
            _end_for(*found)
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def _end_for(rank: int, code: int, message: str) -> None:
    if _STATE.rank == 0:
        sys.stderr.write(f"ad: error: rank {rank} of {_STATE.world_size} failed: {message}\n")
        sys.stderr.flush()
        time.sleep(0.2)  # let the failed rank finish writing its own output
    os._exit(code or 1)


def _read_failure() -> Optional[tuple[int, int, str]]:
    with _BOARD["lock"]:
        if not _BOARD["store"].check([ERROR_KEY]):
            return None
        raw = _BOARD["store"].get(ERROR_KEY).decode(errors="replace")
    rank, code, message = raw.split("\n", 2)
    return int(rank), int(code), message


def _watch() -> None:
    stop = _BOARD["stop"]
    while not stop.wait(0.5):
        try:
            found = _read_failure()
        except Exception:  # noqa: BLE001 - the store went away: rank 0 (its host) ended
            if _STATE.rank != 0:
                os._exit(1)
            return
        if found is None or found[0] == _STATE.rank:
            continue
        _end_for(*found)
