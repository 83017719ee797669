"""Share a folder run among torchrun processes: each file done by exactly one, one combined summary."""

from __future__ import annotations

import contextlib
import datetime
import heapq
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from PIL import Image

from imgtrans.errors import UserError
from imgtrans.pipelines.folders import FolderReport, Job, Plan
from imgtrans.train.runtime import TorchrunEnv, select_device, torchrun_env


def shard(weights: Sequence[float], world: int) -> list[list[int]]:
    """Split item indices 0..n-1 into `world` disjoint shares of near-equal total weight.

    Greedy, heaviest first, each item to the lightest share (ties: fewer items, then lower rank),
    so any two shares differ by at most the heaviest item. Shares list indices in ascending order.
    A pure function of its inputs: every process computes the same split.
    """
    if world < 1:
        raise ValueError(f"world={world}: need at least one share")
    heap = [(0.0, 0, r) for r in range(world)]  # (load, items, rank)
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        load, count, r = heapq.heappop(heap)
        shares[r].append(i)
        heapq.heappush(heap, (load + weights[i], count + 1, r))
    return [sorted(s) for s in shares]


def pixel_count(path: Path) -> int:
    """Width x height from the image header (nothing decoded); 0 when the header is unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decompression-bomb warnings: reading the file reports those
            with Image.open(path) as img:
                return img.width * img.height
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return 0


def merge_reports(parts: list[FolderReport]) -> FolderReport:
    """One report for a run shared by processes: files in path order, the slowest process's time."""
    return FolderReport(converted=sorted(p for r in parts for p in r.converted),
                        skipped=sorted(p for r in parts for p in r.skipped),
                        failed=sorted((f for r in parts for f in r.failed), key=lambda f: f[0]),
                        seconds=max((r.seconds for r in parts), default=0.0))


def _share_threads(env: TorchrunEnv) -> None:
    """Give each process its part of this machine's cores.

    N processes each using every core would oversubscribe the CPU (N x cores threads fighting
    for cores, slower than one process). An OMP_NUM_THREADS that is set wins: the user chose it
    (torchrun itself sets 1 per process when the user did not, and that cannot be told apart).
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // env.local_world_size))


@dataclass
class Shard:
    """This process's part of a folder run: everything when alone, one share under torchrun."""

    env: TorchrunEnv | None = None

    @property
    def distributed(self) -> bool:
        return self.env is not None

    @property
    def is_main(self) -> bool:
        return self.env is None or self.env.rank == 0

    def device(self, name: str) -> str:
        """The device option for this process: under torchrun, `auto` and `cuda` mean cuda:LOCAL_RANK."""
        if self.env is None:
            return name
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        # More processes than GPUs share them round robin rather than fail: for inference two
        # processes per GPU can help, one decoding while the other runs the network.
        dev = select_device(name, self.env.local_rank % gpus if gpus else 0)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # so stray default-device allocations land on this rank's GPU
        return str(dev)

    def plan(self, make: Callable[[], Plan]) -> tuple[Plan, list[Job]]:
        """The whole run's plan and this process's jobs.

        Under torchrun, rank 0 plans alone and sends the plan and the split to every rank: ranks
        that listed the folders themselves could disagree once another rank has written outputs
        (skip-existing), and a file would be done twice or never.
        """
        if self.env is None:
            work = make()
            return work, work.jobs
        box: list[Any] = [None]
        if self.env.rank == 0:
            try:
                work = make()
                box[0] = (work, shard([pixel_count(j.src) for j in work.jobs], self.env.world_size))
            except UserError as e:
                box[0] = e
        dist.broadcast_object_list(box, src=0)
        if isinstance(box[0], UserError):
            if self.env.rank == 0:
                raise box[0]
            raise SystemExit(2)  # rank 0 prints the error once
        work, shares = box[0]
        return work, [work.jobs[i] for i in shares[self.env.rank]]

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order ([obj] when alone)."""
        if self.env is None:
            return [obj]
        out: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(out, obj)
        return out

    def combine(self, report: FolderReport) -> FolderReport:
        """The whole run's report on every process (this report itself when alone)."""
        return report if self.env is None else merge_reports(self.gather(report))


@contextlib.contextmanager
def folder_shard() -> Iterator[Shard]:
    """This process's Shard; under torchrun, joins a gloo group for the plan and the summary."""
    env = torchrun_env()
    if env is None:
        yield Shard()
        return
    _share_threads(env)
    owned = not dist.is_initialized()
    if owned:
        # gloo on GPU machines too: only small Python objects travel. The closing gather waits
        # for the slowest share however long it takes; a process that dies makes torchrun stop
        # the others, so the long timeout never hides a crash.
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
    try:
        yield Shard(env)
    finally:
        if owned:
            dist.destroy_process_group()
