"""Where and how training runs: device choice, torchrun/DDP process group, autocast and scaler."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from imgtrans.errors import UserError

AMP_MODES = ("off", "bf16", "fp16")


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), the only case where bf16
    autocast is faster than fp32 there: without it oneDNN emulates bf16, measured ~4x slower
    than fp32 for the ResNet generator (benchmarks/README.md). Unknown means no."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return False


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; anything else is checked and used as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu")
    return dev


class TorchrunEnv(NamedTuple):
    """This process's place among the processes torchrun started."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int  # processes on this machine


def torchrun_env() -> TorchrunEnv | None:
    """Where this process stands when launched by torchrun with more than one process, else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    if world <= 1:
        return None
    # Launchers other than torchrun may leave LOCAL_WORLD_SIZE out; then assume one machine.
    return TorchrunEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                       int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


@dataclass
class Runtime:
    """The process's place in a (possibly distributed) run and its numeric settings."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp: str = "off"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    @property
    def channels_last(self) -> bool:
        # Measured no faster on CPU (see ANCHORS.md); on CUDA it lets cuDNN use NHWC kernels.
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; bf16 has float32's exponent range.
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def prepare(self, net: nn.Module) -> nn.Module:
        """Move a network to the device (NHWC on CUDA) and wrap it in DDP when distributed."""
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if not self.distributed:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(net, device_ids=ids, broadcast_buffers=True)

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if self.channels_last and v.dim() == 4:
                    v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def all_true(self, flag: bool) -> bool:
        """True only if `flag` holds on every rank (so all ranks take the same branch)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0.5)

    def mean(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Scalars averaged over ranks (so logged losses cover the global batch)."""
        if not self.distributed or not values:
            return values
        t = torch.stack([v.to(self.device).float().reshape(()) for v in values])
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return list(t.div_(self.world_size).unbind())

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's value of `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def amp_hint(rt: Runtime) -> str | None:
    """A one-line suggestion when mixed precision is off on a CPU that computes bf16 natively,
    where bf16 autocast is the largest speed-up available (convolutions are ~80% of a step)."""
    if rt.amp != "off" or rt.device.type != "cpu" or not native_cpu_bf16():
        return None
    return ("note: this CPU computes bf16 natively; --set amp=bf16 trains faster here (a CycleGAN step "
            "ran 1.7x faster on an AVX512-BF16 CPU, benchmarks/README.md)")


def init_runtime(device: str = "auto", amp: str = "off") -> Runtime:
    """Build the runtime; under torchrun, join the process group (nccl on GPU, gloo on CPU)."""
    if amp not in AMP_MODES:
        raise UserError(f"amp={amp!r}: choose one of {', '.join(AMP_MODES)}")
    env = torchrun_env()
    rank, world, local = (env.rank, env.world_size, env.local_rank) if env else (0, 1, 0)
    dev = select_device(device, local)
    if amp == "fp16" and dev.type == "cpu":
        raise UserError("amp=fp16 needs a GPU; on CPU use amp=bf16 or amp=off")
    if env and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return Runtime(device=dev, rank=rank, world_size=world, amp=amp)


@contextlib.contextmanager
def frozen_sync(nets: list[nn.Module]) -> Iterator[None]:
    """Call frozen DDP networks without gradient synchronisation.

    A network that is called but does not train in a phase (D while G trains) gets no
    gradients; under DDP its reducer would wait for them and fail on the next forward.
    `no_sync()` skips that bookkeeping; the network is still called through its wrapper.
    """
    with contextlib.ExitStack() as stack:
        for net in nets:
            if isinstance(net, DDP):
                stack.enter_context(net.no_sync())
        yield


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; optionally force deterministic kernels (slower on GPU)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
