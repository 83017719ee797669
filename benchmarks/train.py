"""Train benchmark: CycleGAN steps/s of imgtrans's Trainer vs the reference project's plain update step."""

from __future__ import annotations

import itertools
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/x.py` from anywhere

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.common import (  # noqa: E402
    CaseResult,
    case_args,
    interleaved,
    machine_line,
    print_table,
    report,
    run_case,
    synthetic_photo,
    verdict,
    write_jpegs,
)

SCRIPT = Path(__file__).resolve()
TARGET_RATIO = 1.5  # imgtrans steps/s over the naive step's
ADAM_VARIANTS = ("loop", "foreach", "fused")


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run (full or --quick)."""

    crop: int
    ngfs: tuple[int, ...]
    n_blocks: int
    warmup: int
    steps: int
    rounds: int  # alternating naive/imgtrans runs; the best of each counts
    bf16_ngf: int  # also time amp=bf16 at this ngf (0: skip)
    mask_ngf: int  # also time the masked generators (--set mask=true) at this ngf (0: skip)
    compile_ngf: int  # also time torch.compile'd networks at this ngf (0: skip)


FULL = Plan(128, (32, 64), 9, 1, 6, 2, bf16_ngf=32, mask_ngf=32, compile_ngf=32)
QUICK = Plan(32, (8,), 9, 1, 2, 1, bf16_ngf=0, mask_ngf=8, compile_ngf=0)
COMPILE_WARMUP = 3  # steps: the first compiles both phases' graphs, later ones must not recompile


def cyclegan(folder: Path, ngf: int, plan: Plan, mask: bool = False) -> Any:
    from imgtrans.objectives.cyclegan import CycleGAN, CycleGANConfig

    cfg = CycleGANConfig(a=str(folder / "A"), b=str(folder / "B"), ngf=ngf, n_blocks=plan.n_blocks,
                         crop_size=plan.crop, mask=mask)
    torch.manual_seed(0)
    return CycleGAN(cfg, seed=0)


def batch(plan: Plan) -> dict[str, torch.Tensor]:
    """One A and one B image (batch 1, the reference default) in [-1, 1]."""
    def tensor(seed: int) -> torch.Tensor:
        rgb = synthetic_photo(plan.crop, plan.crop, seed)
        return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1

    return {"A": tensor(1), "B": tensor(2)}


def timed(step: Any, plan: Plan) -> dict[str, Any]:
    for _ in range(plan.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(plan.steps):
        step()
    seconds = time.perf_counter() - t0
    return {"steps": plan.steps, "seconds": seconds}


# ----- the reference step -------------------------------------------------------------------
class ReferencePool:
    """The reference project's ImagePool (python `random`, per image)."""

    def __init__(self, size: int) -> None:
        self.size, self.images = size, []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for image in images.data:
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                out.append(image)
            elif random.uniform(0, 1) > 0.5:
                i = random.randint(0, self.size - 1)
                out.append(self.images[i].clone())
                self.images[i] = image
            else:
                out.append(image)
        return torch.cat(out, 0)


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def naive_step(folder: Path, ngf: int, plan: Plan) -> dict[str, Any]:
    """The reference CycleGANModel.optimize_parameters, written out: plain fp32, contiguous
    tensors, torch's default Adam (the per-tensor loop on CPU), its update order."""
    nets = cyclegan(folder, ngf, plan).networks()  # same architectures and initial weights
    g_a, g_b, d_a, d_b = nets["G_AB"], nets["G_BA"], nets["D_B"], nets["D_A"]  # reference D_A judges B
    for net in nets.values():
        net.train()
    opt_g = torch.optim.Adam(itertools.chain(g_a.parameters(), g_b.parameters()), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(itertools.chain(d_a.parameters(), d_b.parameters()), lr=2e-4, betas=(0.5, 0.999))
    mse, l1 = nn.MSELoss(), nn.L1Loss()
    pool_a, pool_b = ReferencePool(50), ReferencePool(50)
    data = batch(plan)
    real_a, real_b = data["A"], data["B"]

    def gan(pred: torch.Tensor, real: bool) -> torch.Tensor:
        return mse(pred, torch.tensor(1.0 if real else 0.0).expand_as(pred))

    def backward_d(net: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> None:
        loss = (gan(net(real), True) + gan(net(fake.detach()), False)) * 0.5
        loss.backward()

    def step() -> None:
        fake_b = g_a(real_a)
        rec_a = g_b(fake_b)
        fake_a = g_b(real_b)
        rec_b = g_a(fake_a)
        set_requires_grad([d_a, d_b], False)
        opt_g.zero_grad()
        loss_idt_a = l1(g_a(real_b), real_b) * 10.0 * 0.5
        loss_idt_b = l1(g_b(real_a), real_a) * 10.0 * 0.5
        loss_g = (gan(d_a(fake_b), True) + gan(d_b(fake_a), True) + l1(rec_a, real_a) * 10.0
                  + l1(rec_b, real_b) * 10.0 + loss_idt_a + loss_idt_b)
        loss_g.backward()
        opt_g.step()
        set_requires_grad([d_a, d_b], True)
        opt_d.zero_grad()
        backward_d(d_a, real_b, pool_b.query(fake_b))
        backward_d(d_b, real_a, pool_a.query(fake_a))
        opt_d.step()

    return timed(step, plan)


# ----- imgtrans -----------------------------------------------------------------------------
def imgtrans_step(folder: Path, ngf: int, plan: Plan, amp: str = "off", compiled: bool = False,
                  branches: bool = True, mask: bool = False) -> dict[str, Any]:
    """imgtrans's Trainer.train_step as `imgtrans train cyclegan` runs it (data already in memory).

    `compiled`: every network wrapped in torch.compile (inductor) first, a candidate not shipped.
    `branches`: False runs the A and B halves one after the other (each on all threads).
    `mask`: the masked generators (`--set mask=true`), whose second 7x7 head draws the mask.
    """
    from imgtrans.train.runtime import init_runtime
    from imgtrans.train.trainer import Trainer, TrainConfig

    cfg = TrainConfig(steps=1000, device="cpu", workers=0, amp=amp, branches=branches)
    objective = cyclegan(folder, ngf, plan, mask=mask)
    if compiled:
        objective._nets = {name: torch.compile(net) for name, net in objective._nets.items()}
        objective.nets = dict(objective._nets)
        t0 = time.perf_counter()
        plan = Plan(**{**plan.__dict__, "warmup": COMPILE_WARMUP})
    trainer = Trainer(objective, cfg, init_runtime("cpu", amp), folder / "run", quiet=True)
    flags = trainer.opts["G"].defaults
    for net in trainer.raw.values():
        net.train()
    data = trainer.rt.to_device(batch(plan))
    result = timed(lambda: trainer.train_step(data), plan)
    if compiled:
        result["warmup_seconds"] = time.perf_counter() - t0 - result["seconds"]
    result["adam"] = "fused" if flags.get("fused") else "foreach" if flags.get("foreach") else "loop"
    result["concurrent"] = trainer.concurrent
    return result


def adam_updates(folder: Path, ngf: int, plan: Plan) -> dict[str, Any]:
    """Seconds of one G + D Adam update per implementation, on the CycleGAN's real parameters
    with random gradients, interleaved: the only part of a step the implementation changes."""
    nets = cyclegan(folder, ngf, plan).networks()
    groups = [[p for n in ("G_AB", "G_BA") for p in nets[n].parameters()],
              [p for n in ("D_A", "D_B") for p in nets[n].parameters()]]
    for p in (p for g in groups for p in g):
        p.grad = torch.randn_like(p) * 1e-3
    flags = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts = {name: [torch.optim.Adam(g, lr=2e-4, betas=(0.5, 0.999), **f) for g in groups]
            for name, f in flags.items()}

    def update(name: str) -> None:
        for opt in opts[name]:
            opt.step()

    seconds = interleaved({name: (lambda n=name: update(n)) for name in ADAM_VARIANTS}, rounds=5)
    return {"seconds": seconds, "params": sum(p.numel() for g in groups for p in g)}


def run_one(case: str, workdir: Path, plan: Plan) -> dict[str, Any]:
    kind, ngf_text = case.split(":")
    ngf = int(ngf_text)
    if kind == "naive":
        return naive_step(workdir, ngf, plan)
    if kind == "imgtrans":
        return imgtrans_step(workdir, ngf, plan)
    if kind == "sequential":
        return imgtrans_step(workdir, ngf, plan, branches=False)
    if kind == "bf16":
        return imgtrans_step(workdir, ngf, plan, amp="bf16")
    if kind == "mask":
        return imgtrans_step(workdir, ngf, plan, mask=True)
    if kind == "compile":
        return imgtrans_step(workdir, ngf, plan, compiled=True)
    if kind == "adam":
        return adam_updates(workdir, ngf, plan)
    raise SystemExit(f"unknown case {case}")


def faster(old: CaseResult | None, new: CaseResult) -> CaseResult:
    """The quicker of two runs of one case (least disturbed), with the larger peak RSS of both."""
    if old is None:
        return new
    best = new if new.values["seconds"] < old.values["seconds"] else old
    return CaseResult(best.name, best.values, max(old.max_rss_mb, new.max_rss_mb), best.seconds)


def step_rows(ngf: int, plan: Plan, work: Path, extra: list[str], notes: list[str]) -> list[list[Any]]:
    res: dict[str, CaseResult] = {}
    for _ in range(plan.rounds):
        for kind in ("naive", "imgtrans", "sequential"):
            res[kind] = faster(res.get(kind), run_case(SCRIPT, f"{kind}:{ngf}", work, extra))
    if plan.bf16_ngf == ngf:
        res["bf16"] = run_case(SCRIPT, f"bf16:{ngf}", work, extra)
    if plan.mask_ngf == ngf:
        res["mask"] = run_case(SCRIPT, f"mask:{ngf}", work, extra)
    if plan.compile_ngf == ngf:
        res["compile"] = run_case(SCRIPT, f"compile:{ngf}", work, extra)
        notes.append(f"- torch.compile at ngf {ngf}: the {COMPILE_WARMUP} warm-up steps (compiling) took "
                     f"{res['compile'].values['warmup_seconds']:.1f} s (less with a warm inductor cache)")
    base = res["naive"].values["steps"] / res["naive"].values["seconds"]
    labels = {"naive": "naive reference step (fp32, torch's default Adam: per-tensor loop on CPU)",
              "imgtrans": f"imgtrans Trainer as shipped (fp32, Adam {res['imgtrans'].values['adam']}"
                          + (", A and B halves concurrently)" if res["imgtrans"].values["concurrent"] else ")"),
              "sequential": "imgtrans Trainer, halves one after the other (--set branches=false)",
              "bf16": "imgtrans Trainer, --set amp=bf16",
              "mask": "imgtrans Trainer, masked generators (--set mask=true; fp32)",
              "compile": "imgtrans Trainer, torch.compile'd networks (not shipped)"}
    rows = []
    for kind, r in res.items():
        rate = r.values["steps"] / r.values["seconds"]
        shipped = kind == "imgtrans"
        rows.append([f"ngf {ngf}, {plan.crop} px", labels[kind], rate, 1 / rate, r.max_rss_mb, rate / base,
                     f">= {TARGET_RATIO}x naive" if shipped else "",
                     verdict(rate / base >= TARGET_RATIO) if shipped else ""])
    return rows


def adam_rows(ngf: int, plan: Plan, work: Path, extra: list[str], step_s: float) -> list[list[Any]]:
    v = run_case(SCRIPT, f"adam:{ngf}", work, extra).values
    loop = v["seconds"]["loop"]
    return [[f"ngf {ngf} ({v['params'] / 1e6:.1f} M params)", name, s * 1000, 100 * s / step_s, loop / s,
             "shipped" if name == "fused" else ""] for name, s in v["seconds"].items()]


def main() -> None:
    args = case_args(__doc__.splitlines()[0]).parse_args()
    plan = QUICK if args.quick else FULL
    extra = ["--quick"] if args.quick else []
    if args.case:
        report(run_one(args.case, Path(args.workdir), plan))
        return
    print(f"train benchmark ({'quick' if args.quick else 'full'}): {machine_line()}\n", flush=True)
    steps, updates, notes = [], [], []
    with tempfile.TemporaryDirectory(prefix="imgtrans-bench-") as tmp:
        work = Path(tmp)
        write_jpegs(work / "A", 2, plan.crop + 16, plan.crop + 16, seed=0)
        write_jpegs(work / "B", 2, plan.crop + 16, plan.crop + 16, seed=10)
        for ngf in plan.ngfs:
            rows = step_rows(ngf, plan, work, extra, notes)
            steps += rows
            updates += adam_rows(ngf, plan, work, extra, step_s=rows[1][3])
    print_table(f"CycleGAN training step (G + D, batch 1, ResNet-{plan.n_blocks} generators; {plan.steps} timed steps "
                f"after {plan.warmup} warm-up; best of {plan.rounds} alternating runs, a fresh process per run)",
                ["model", "implementation", "steps/s", "s/step", "max RSS MB", "vs naive", "target", "result"],
                steps)
    print("\n".join(notes) + "\n" if notes else "", end="")
    print_table("Adam update alone (G + D optimizers, random gradients; best of 5 interleaved rounds)",
                ["model", "Adam", "ms/update", "% of a shipped step", "vs loop", ""], updates)


if __name__ == "__main__":
    main()
