"""Run a function on N CPU processes joined in a gloo process group, for tests of cross-rank code.

    from dist_utils import run_on_ranks

    def _sum_ranks(rank: int, world_size: int, scale: float) -> float:   # module level: it is pickled
        t = torch.tensor([rank * scale])
        torch.distributed.all_reduce(t)
        return t.item()

    def test_all_reduce_adds_every_rank():
        assert run_on_ranks(_sum_ranks, 2, 10.0) == [10.0, 10.0]

The processes come from a fork server that imported torch once, so each call costs a fork rather than
a fresh interpreter (importing torch takes seconds). Each process uses one thread, rendezvouses through
a file store in a private temporary folder (no port to collide on) and returns its result through a file
written with ``torch.save``. If any rank raises, the others are terminated and the exception, with the
failing rank's traceback, is raised in the caller.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp

# Only takes effect when this pytest process starts the fork server, i.e. on its first use.
multiprocessing.get_context("forkserver").set_forkserver_preload(["torch", "torch.distributed"])


def _worker(rank: int, world_size: int, tmp: str, fn: Callable[..., Any], args: tuple,
            collective_timeout: float) -> None:
    torch.set_num_threads(1)  # the test machine's cores are shared between processes and people
    if "GLOO_SOCKET_IFNAME" not in os.environ and any(name == "lo" for _, name in socket.if_nameindex()):
        # gloo otherwise binds to whatever the host name resolves to, which may be unreachable offline.
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=collective_timeout))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(tmp, f"result{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable[..., Any], world_size: int = 2, *args: Any, timeout: float = 60.0,
                 start_method: str = "forkserver") -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo CPU processes; return their results by rank.

    ``fn`` and ``args`` must be picklable (a module-level function); results may be anything
    ``torch.save`` writes (tensors, numbers, lists, dicts). Raises the failing rank's exception
    (``torch.multiprocessing.ProcessRaisedException``) if one raises, and ``TimeoutError`` if the ranks
    have not all returned after ``timeout`` seconds (a collective only some ranks reached, say).
    ``start_method='spawn'`` trades speed for a fresh interpreter per rank.
    """
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_dist_") as tmp:
        ctx = torch_mp.start_processes(_worker, args=(world_size, tmp, fn, args, timeout), nprocs=world_size,
                                       join=False, start_method=start_method)
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.terminate()
                for p in ctx.processes:
                    p.join()
                raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not finish on {world_size} ranks "
                                   f"within {timeout} s")
        return [torch.load(os.path.join(tmp, f"result{r}.pt"), weights_only=False) for r in range(world_size)]
