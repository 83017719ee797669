"""Runs a phase's independent loss branches concurrently on CPU, each forward and backward in its own thread.

A CycleGAN step is two mirror-image chains (A -> B -> A and B -> A -> B) whose graphs share only
parameters. At batch 1 one chain cannot keep several cores busy (2 threads run a ResNet-9 step
1.56x faster than 1), but two chains with their own threads can: on 2 cores the G + D step took
0.81 s this way against 0.95 s with both threads inside each operation (benchmarks/README.md).

Results do not depend on thread timing: each parameter receives at most one gradient per branch
(autograd sums the uses within a graph first), and with two branches the one accumulation order
that can vary is a + b against b + a, which floating point rounds identically. Branches must not
draw from a shared random stream (dropout), whose draws would interleave at random.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from imgtrans.train.objective import Branch, Losses, combine

Backward = Callable[[torch.Tensor], None]
ContextFactory = Callable[[], contextlib.AbstractContextManager]


def threads_per_branch(total: int, branches: int) -> int:
    """The cores split evenly between concurrent branches (at least one each)."""
    return max(1, total // max(1, branches))


class BranchRunner:
    """A pool of `branches` threads, each running torch on `threads` intra-op threads."""

    def __init__(self, branches: int, threads: int) -> None:
        self.branches, self.threads = branches, threads
        ready = threading.Barrier(branches + 1)
        outer = torch.get_num_threads()

        def start() -> None:
            # The first query initialises this thread's setting from torch's process default;
            # done later (at the first operation) it would undo the narrowing below.
            torch.get_num_threads()
            torch.set_num_threads(threads)  # this thread's own OpenMP team size
            ready.wait()

        self.pool = ThreadPoolExecutor(branches, thread_name_prefix="imgtrans-branch", initializer=start)
        # Start every worker now: the pool creates threads lazily, one per submit.
        waits = [self.pool.submit(lambda: None) for _ in range(branches)]
        ready.wait()
        for w in waits:
            w.result()
        # torch also keeps the last setting as the default for threads created later; give the
        # process's own back, so only the workers run narrow.
        torch.set_num_threads(outer)

    def run(self, branches: list[Branch], backward: Backward, context: ContextFactory) -> tuple[torch.Tensor, Losses]:
        """Forward and backward of every branch concurrently; the summed loss (detached) and terms.

        `context` is entered in each worker (autocast is per thread). A branch with a non-finite
        loss still runs its backward: the caller checks the sum and discards the gradients.
        """

        def one(branch: Branch) -> tuple[torch.Tensor, Losses]:
            with context():
                loss, terms = branch()
            backward(loss)
            return loss.detach().float(), terms

        return combine([f.result() for f in [self.pool.submit(one, b) for b in branches]])

    def close(self) -> None:
        self.pool.shutdown(wait=True)
