"""Starting the ranks of a `world_size: N` run: spawned by `ad` itself, or joined from a launcher (torchrun).

Spawned: this process becomes rank 0 (it owns the tokenizer, the scheduler and all output) and starts ranks
1..N-1 as child processes (multiprocessing "spawn"), which meet it through a TCP store on a port the OS picked.
Joined: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT are set (torchrun, torchelastic; or mpirun's
OMPI_COMM_WORLD_* with MASTER_ADDR / MASTER_PORT): this process is the rank the environment names; the launcher
started the others (the multi-node path).

Endings:
* a rank raises: it writes its message to the store; every rank ends within a second, rank 0 printing
  `ad: error: rank R of N failed: <message>` and exiting non-zero (groups.py);
* a child dies without a word (killed, segfault): rank 0's monitor sees its exit and ends the run;
* rank 0 dies: the children get SIGTERM (PR_SET_PDEATHSIG) and their watchdogs lose the store, so none outlives it;
* Ctrl-C: rank 0 handles KeyboardInterrupt as usual and kills the children (which ignore SIGINT from their start);
  if rank 0 is still running 10 s later (stuck inside a collective or the rendezvous, or in its own shutdown), a
  watcher thread or the shutdown's timer ends everything.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.distributed import broadcast, groups
from autodeploy_cli.errors import ADError, first_line

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
INTERRUPT_GRACE_S = 10.0


def device_type_of(device: str) -> str:
    """`cuda` or `cpu` for the config's `device` (auto: cuda when a GPU is visible)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def joined_env() -> Optional[dict]:
    """The launcher's environment (torchrun / torchelastic), or None when this process was not launched so."""
    env = dict(os.environ)
    if "RANK" not in env and "OMPI_COMM_WORLD_RANK" in env:  # mpirun: its names, MASTER_ADDR/PORT from the user
        env.update(RANK=env["OMPI_COMM_WORLD_RANK"], WORLD_SIZE=env.get("OMPI_COMM_WORLD_SIZE", "1"),
                   LOCAL_RANK=env.get("OMPI_COMM_WORLD_LOCAL_RANK", env["OMPI_COMM_WORLD_RANK"]),
                   LOCAL_WORLD_SIZE=env.get("OMPI_COMM_WORLD_LOCAL_SIZE", env.get("OMPI_COMM_WORLD_SIZE", "1")))
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, ws = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
        local_ws = int(env.get("LOCAL_WORLD_SIZE", ws))
        port = int(env.get("MASTER_PORT", "29500"))
    except ValueError:
        raise ADError("RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and MASTER_PORT must be integers (they are set "
                      "by torchrun); unset them to let `ad` start the ranks itself.") from None
    return {"rank": rank, "world_size": ws, "local_rank": local, "local_world_size": local_ws,
            "addr": env.get("MASTER_ADDR", LOOPBACK), "port": port,
            "agent_store": env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"}


def preflight(world_size: int, device_type: str, local_world_size: int) -> None:
    """The errors to give before anything is built: no backend for this device, or too few GPUs."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise ADError(f"`world_size: {world_size}` needs torch.distributed, which this torch build lacks. Install a "
                      "torch build with distributed support, or set `world_size: 1`.")
    if device_type == "cuda":
        if not dist.is_nccl_available():
            raise ADError(f"`world_size: {world_size}` on GPUs needs the NCCL backend of torch.distributed, which this "
                          "torch build lacks. Install a CUDA build of torch (it ships NCCL), or run on the CPU with "
                          "`device=cpu` (gloo).")
        visible = torch.cuda.device_count()
        if local_world_size > visible:
            where = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ADError(
                f"`world_size: {world_size}` needs {local_world_size} GPUs on this machine (one per rank) but "
                f"{visible} {'is' if visible == 1 else 'are'} visible"
                f"{f' (CUDA_VISIBLE_DEVICES={where})' if where is not None else ''}. Lower `world_size` to at most "
                f"{visible}, or spread the ranks over machines with `torchrun --nnodes ...`.")
    elif not dist.is_gloo_available():
        raise ADError(f"`world_size: {world_size}` on the CPU needs the gloo backend of torch.distributed, which this "
                      "torch build lacks. Install the standard torch build, or set `world_size: 1`.")


def describe(exc: BaseException) -> tuple[str, int]:
    """(message, exit code) of a rank's failure, as the CLI would print it."""
    if isinstance(exc, ADError):
        return str(exc), 2
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(exc, SystemExit):
        return f"exited with status {exc.code}", int(exc.code) if isinstance(exc.code, int) and exc.code else 1
    first = first_line(exc, default="")
    return f"internal error: {type(exc).__name__}: {first}", 1


@dataclass
class Session:
    """This process's part in a run: rank, world size, how it started, and (rank 0, spawned) its children."""

    rank: int = 0
    world_size: int = 1
    mode: str = "single"  # single | spawn | join
    children: list = field(default_factory=list)
    closed: bool = False

    def close(self, error: Optional[BaseException] = None) -> None:
        """End the run: STOP to the followers after a clean end; after a failure, the failure report."""
        if self.closed or self.mode == "single":
            self.closed = True
            return
        self.closed = True
        if error is None:
            try:
                if self.rank == 0:
                    broadcast.send_stop()
                groups.shutdown()
            except RuntimeError:  # the other ranks are gone already (e.g. one SIGTERM reached the whole group)
                pass
        else:
            if isinstance(error, KeyboardInterrupt):
                self._end_interrupted_run()
            groups.end_if_peer_failed()  # the cause, if another rank failed first (then this does not return)
            groups.report_failure(*describe(error))
        _restore_wakeup()
        for p in self.children:
            p.join(timeout=30 if error is None else 2)
        for p in self.children:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)

    def _end_interrupted_run(self) -> None:
        """Ctrl-C: the children go at once (they ignore SIGINT; one still starting up may not have reached its
        handlers), and the process ends within the grace time even if its own shutdown blocks."""
        self.kill_children()
        timer = threading.Timer(INTERRUPT_GRACE_S, self._exit_interrupted)
        timer.daemon = True
        timer.start()

    def _exit_interrupted(self) -> None:
        sys.stderr.write("ad: interrupted\n")
        sys.stderr.flush()
        self.kill_children()
        os._exit(130)

    def kill_children(self) -> None:
        for p in self.children:
            if p.is_alive():
                p.kill()

    # --- rank 0 of a spawned run ----------------------------------------------------------------------------------
    def watch_children(self) -> None:
        threading.Thread(target=self._monitor, name="ad-rank-monitor", daemon=True).start()

    def _monitor(self) -> None:
        from multiprocessing.connection import wait

        alive = {p.sentinel: (r, p) for r, p in enumerate(self.children, start=1)}
        while alive and not self.closed:
            for s in wait(list(alive), timeout=0.5):
                rank, p = alive.pop(s)
                p.join()
                if p.exitcode != 0 and not self.closed:
                    time.sleep(2.0)  # a rank that raised has reported: the watchdog prints its message first
                    if self.closed:
                        return
                    how = f"signal {signal.Signals(-p.exitcode).name}" if p.exitcode < 0 else f"code {p.exitcode}"
                    sys.stderr.write(f"ad: error: rank {rank} of {self.world_size} died ({how}) without reporting an "
                                     "error (out of host memory?); the run is ended.\n")
                    sys.stderr.flush()
                    self.kill_children()
                    os._exit(1)

    def watch_interrupts(self) -> None:
        """Ctrl-C that KeyboardInterrupt cannot deliver (the main thread stuck in C++) still ends the run."""
        if threading.current_thread() is not threading.main_thread():
            return
        r, w = os.pipe()
        os.set_blocking(w, False)
        try:
            _WAKEUP["old"] = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        except ValueError:
            return
        _WAKEUP["fds"] = (r, w)

        def watch() -> None:
            while True:
                try:
                    got = os.read(r, 16)
                except OSError:
                    return
                if not got or self.closed:
                    return  # closing: an interrupted close has its own timer (_end_interrupted_run)
                if signal.SIGINT in got:
                    time.sleep(INTERRUPT_GRACE_S)
                    if not self.closed:
                        self._exit_interrupted()

        threading.Thread(target=watch, name="ad-interrupt-watcher", daemon=True).start()


_WAKEUP: dict[str, Any] = {}


def _restore_wakeup() -> None:
    if "fds" in _WAKEUP and threading.current_thread() is threading.main_thread():
        signal.set_wakeup_fd(_WAKEUP.pop("old", -1))
        for fd in _WAKEUP.pop("fds"):
            os.close(fd)


def _die_with_parent() -> None:
    """Linux: SIGTERM when the parent (rank 0) exits, however it exits."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _quiet_follower_logs() -> None:
    """Followers log warnings and errors only (rank 0 prints the build log once)."""
    if os.environ.get("AUTO_DEPLOY_LOG_LEVEL", "").upper() not in ("DEBUG", "ERROR"):
        os.environ["AUTO_DEPLOY_LOG_LEVEL"] = "WARNING"


def _child_main(rank: int, world_size: int, port: int, device_type: str, follower: Callable[[], None]) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides how the run ends
    _quiet_follower_logs()
    try:
        store = groups.make_store(LOOPBACK, port, world_size, False)
        groups.init(rank, world_size, rank, store, LOOPBACK, port, device_type)
        follower()
        groups.shutdown()
    except BaseException as e:  # noqa: BLE001 - every failure ends the run with this rank's message
        message, code = describe(e)
        if os.environ.get("AUTO_DEPLOY_LOG_LEVEL", "").upper() == "DEBUG":
            import traceback

            traceback.print_exc()
        groups.report_failure(message, code)
        os._exit(code)


def start(cfg: ADConfig, follower: Callable[[], None]) -> Session:
    """Join or start the ranks of `cfg` (joined: `cfg.world_size` takes the launcher's WORLD_SIZE)."""
    if groups.is_distributed():
        raise ADError("This process already belongs to a multi-rank run; build one multi-rank model per process.")
    device_type = device_type_of(cfg.device)
    env = joined_env()
    if env is not None and env["world_size"] > 1:
        if cfg.world_size not in (1, env["world_size"]):
            raise ADError(f"The launcher started {env['world_size']} ranks (WORLD_SIZE) but the config says "
                          f"`world_size: {cfg.world_size}`; make them equal, or leave `world_size` at 1.")
        cfg.world_size = env["world_size"]
        preflight(cfg.world_size, device_type, env["local_world_size"])
        if env["rank"] != 0:
            _quiet_follower_logs()
        master = env["rank"] == 0 and not env["agent_store"]
        store = groups.make_store(env["addr"], env["port"], cfg.world_size, master)
        groups.init(env["rank"], cfg.world_size, env["local_rank"], store, env["addr"], env["port"], device_type)
        return Session(env["rank"], cfg.world_size, "join")
    if cfg.world_size < 1:
        raise ADError(f"`world_size` must be at least 1, got {cfg.world_size}.")
    if cfg.world_size == 1:
        return Session()
    return _spawn(cfg.world_size, device_type, follower)


def _spawn(world_size: int, device_type: str, follower: Callable[[], None]) -> Session:
    import multiprocessing as mp

    preflight(world_size, device_type, world_size)
    store = groups.make_store(LOOPBACK, 0, world_size, True)
    ctx = mp.get_context("spawn")
    session = Session(0, world_size, "spawn")
    # the children start with SIGINT ignored (an ignored signal stays ignored across exec, and Python keeps it so):
    # a Ctrl-C while one is still importing would otherwise kill it before the rendezvous, leaving rank 0 waiting
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for rank in range(1, world_size):
            p = ctx.Process(target=_child_main, args=(rank, world_size, store.port, device_type, follower),
                            name=f"ad-rank-{rank}", daemon=False)
            p.start()
            session.children.append(p)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    session.watch_children()
    session.watch_interrupts()  # before the rendezvous: a Ctrl-C while it waits in C++ still ends the run
    try:
        groups.init(0, world_size, 0, store, LOOPBACK, store.port, device_type)
    except BaseException as e:
        session.close(e)
        raise
    return session


def run(cfg: ADConfig, leader: Callable[[], T], follower: Callable[[], None]) -> Optional[T]:
    """Run a command on `cfg.world_size` ranks: `leader` on rank 0, `follower` (which follows rank 0's builds and
    steps) on the others. Returns the leader's result on rank 0 and None on the other ranks."""
    session = start(cfg, follower)
    try:
        result = leader() if session.rank == 0 else follower()
    except BaseException as e:
        session.close(e)
        raise
    session.close()
    return result if session.rank == 0 else None
