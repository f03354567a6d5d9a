"""One job, several ranks: torchrun, accelerate launch or srun split the heavy stages between processes.

The launcher's variables say who we are (`runtime.rank_info`); `torch.distributed` carries the
barriers and the merges: the default process group is gloo on CPU and `cpu:gloo,cuda:nccl` with
CUDA, and our small CPU-side objects travel in a gloo group of all ranks. Work is split so that
results do not depend on the number of ranks:

- batches: batch b of an image list goes to rank b % world, so every rank encodes exactly the
  batches one process would (same composition, same numbers), and each round of `world` batches
  is consecutive in input order: gathered after every round, rows stream out in input order;
- groups (one cached feature file per class or shard): group g goes to rank g % world and the
  owner alone writes its cache entry;
- prompts: each rank appends to its own part file; the leader merges them in selection order.

Every collective has a timeout (SYNOOD_DIST_TIMEOUT seconds, default 1800; joining the group
allows at least 10 min, a wait on another rank's long work, `barrier(long=True)`, 24 h): a rank that died (at once) or hangs ends the job
with an error that names the step and, at a barrier, the ranks that did not arrive; never a hang.
Without a launcher (world size 1) every function here is a no-op on local data, and torch.distributed
is never imported.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from synood_cli.errors import SynoodError, first_line
from synood_cli.runtime import rank_info

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 1800.0
JOIN_TIMEOUT_S = 600.0  # joining: ranks reach their first collective after loading models, seconds apart
LONG_WAIT_S = 24 * 3600.0  # `barrier(long=True)`: waiting for another rank's long work; a dead rank still ends it at once
_state: dict = {}


class RankFailed(SynoodError):
    """A collective failed or timed out: another rank died, hung, or the launch is inconsistent."""

    exit_code = 3


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def ranks() -> Ranks:
    return Ranks(*rank_info())


def is_leader() -> bool:
    return rank_info()[0] == 0


def timeout_s() -> float:
    raw = os.environ.get("SYNOOD_DIST_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        from synood_cli.errors import UsageError

        raise UsageError(f"SYNOOD_DIST_TIMEOUT={raw!r} is not a number of seconds", hint="e.g. SYNOOD_DIST_TIMEOUT=1800") from None
    return value if value > 0 else DEFAULT_TIMEOUT_S


def _rendezvous_env(r: Ranks) -> None:
    """srun sets ranks but no rendezvous address: take the launching node and a port from the job id."""
    env = os.environ
    if "MASTER_ADDR" not in env and "SLURM_LAUNCH_NODE_IPADDR" in env:
        env["MASTER_ADDR"] = env["SLURM_LAUNCH_NODE_IPADDR"]
    if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
        env["MASTER_PORT"] = str(20000 + int(env["SLURM_JOB_ID"]) % 20000)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.setdefault(key, str({"RANK": r.rank, "WORLD_SIZE": r.world, "LOCAL_RANK": r.local_rank}[key]))
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        from synood_cli.errors import UsageError

        raise UsageError(
            f"{' and '.join(missing)} not set, so the ranks cannot find each other",
            hint="launch with torchrun or accelerate launch, or export MASTER_ADDR (the first node) and MASTER_PORT before srun",
        )


def _group():
    """The process group, created on first use (one per process, kept until exit)."""
    if "group" in _state:
        return _state["group"]
    import torch
    import torch.distributed as dist

    r = ranks()
    _rendezvous_env(r)
    if torch.cuda.is_available():
        torch.cuda.set_device(r.local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    timeout = datetime.timedelta(seconds=timeout_s())
    join = max(JOIN_TIMEOUT_S, timeout_s())
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=join))
        # our collectives move small CPU objects: a gloo group of all ranks, whatever the default
        # backend, so barriers are gloo's monitored ones (they name the missing ranks) on GPUs too
        group = dist.new_group(backend="gloo", timeout=timeout)
        # waits for another rank's long work (training, the other ranks' classes): a gloo recv is
        # bounded by its group's timeout, whatever the barrier's own, so they get a group of their own
        _state["long"] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=max(LONG_WAIT_S, timeout_s())))
    except Exception as e:  # noqa: BLE001 - rendezvous errors come in many types
        raise RankFailed(
            f"could not join the other ranks ({first_line(e, 240)})",
            hint=f"check MASTER_ADDR/MASTER_PORT and that all {r.world} ranks were started; waited up to {join:.0f} s",
        ) from None
    _state["group"] = group
    import atexit

    atexit.register(_shutdown)
    return _state["group"]


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer may already be gone at exit
            pass
    _state.clear()


def _collective(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except SynoodError:
        raise
    except Exception as e:  # noqa: BLE001 - gloo/NCCL errors: peer closed, timeout, ...
        import re

        # gloo's monitored barrier names the ranks that did not arrive: "Ranks 1, 3 failed to pass monitoredBarrier"
        missing = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(e))
        who = f"rank {missing.group(1).strip()} did not answer" if missing else "the other ranks stopped answering"
        raise RankFailed(
            f"{who} while {what} ({first_line(e, 240)})",
            hint=f"a rank failed or hung: see its error above; collectives wait at most {timeout_s():.0f} s (SYNOOD_DIST_TIMEOUT)",
        ) from None


def all_gather(obj: Any, what: str) -> list:
    """Every rank's `obj`, in rank order, on every rank ([obj] without a launcher)."""
    r = ranks()
    if not r.active:
        return [obj]
    group = _group()
    import torch.distributed as dist

    out: list = [None] * r.world
    _collective(what, lambda: dist.all_gather_object(out, obj, group=group))
    return out


def gather_to_leader(obj: Any, what: str) -> list | None:
    """Every rank's `obj` in rank order on rank 0; None on the others."""
    r = ranks()
    if not r.active:
        return [obj]
    group = _group()
    import torch.distributed as dist

    out: list | None = [None] * r.world if r.leader else None
    _collective(what, lambda: dist.gather_object(obj, out, dst=0, group=group))
    return out


def broadcast(obj: Any, what: str) -> Any:
    """Rank 0's `obj` on every rank."""
    r = ranks()
    if not r.active:
        return obj
    group = _group()
    import torch.distributed as dist

    box = [obj if r.leader else None]
    _collective(what, lambda: dist.broadcast_object_list(box, src=0, group=group))
    return box[0]


def barrier(what: str, long: bool = False) -> None:
    """Wait for every rank; rank 0 names the ranks that did not arrive (gloo's monitored barrier).

    `long`: up to LONG_WAIT_S instead of SYNOOD_DIST_TIMEOUT, for a wait on another rank's long work.
    """
    r = ranks()
    if not r.active:
        return
    group = _group()
    if long:
        group = _state["long"]
    import torch.distributed as dist

    wait = datetime.timedelta(seconds=max(LONG_WAIT_S, timeout_s()) if long else timeout_s())
    _collective(what, lambda: dist.monitored_barrier(group=group, timeout=wait, wait_all_ranks=True))


def my_batches(n_items: int, batch_size: int, r: Ranks | None = None) -> list[int]:
    """Batch numbers this rank encodes: b % world == rank (the single-process batches, dealt out)."""
    r = r or ranks()
    n_batches = -(-n_items // batch_size)
    return list(range(r.rank, n_batches, r.world))


def batch_items(batches: list[int], n_items: int, batch_size: int) -> list[int]:
    """The item positions of these batches, in order."""
    return [i for b in batches for i in range(b * batch_size, min((b + 1) * batch_size, n_items))]


def rounds(mine: Iterator[T], n_items: int, batch_size: int, what: str) -> Iterator[list[T]]:
    """Run this rank's batches in lock-step rounds; each round yields every rank's result in batch order.

    Round k holds batches k*world .. k*world+world-1: consecutive in input order, so a caller
    that writes each round as it comes streams rows in input order. A rank without a batch in
    the last round contributes nothing.
    """
    r = ranks()
    n_batches = -(-n_items // batch_size)
    n_rounds = -(-n_batches // r.world)
    for k in range(n_rounds):
        result = next(mine) if k * r.world + r.rank < n_batches else None
        gathered = all_gather(result, f"{what} (batch round {k + 1}/{n_rounds})")
        yield [g for g in gathered if g is not None]
