"""The `imgtrans` command line: parsing and user-facing messages only."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import click

from imgtrans import __version__
from imgtrans.errors import UserError
from imgtrans.registry import objective_class, objective_names


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imgtrans")
def cli() -> None:
    """Image translation (CycleGAN) and face editing for photo folders, on CPU or GPU."""


class TrainGroup(click.Group):
    """`imgtrans train NAME`: one subcommand per registered objective, built on demand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*objective_names(), *sorted(self.commands)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands:  # tools for runs (e.g. `compact`), beside the objectives
            return self.commands[name]
        if name not in objective_names():
            return None
        return _train_command(name)


@cli.group(cls=TrainGroup)
def train() -> None:
    """Train a model on your own folders (run under torchrun for several processes)."""


@train.command("compact")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.argument("dest", type=click.Path(file_okay=False))
def train_compact(run_dir: str, dest: str) -> None:
    """Copy RUN_DIR's newest checkpoint to DEST, in fp16 and without optimizer state (1/5 the size).

    DEST is a run folder: `imgtrans train NAME --resume DEST` continues at the same step and
    learning rate, with fresh optimizers and image pools. Keep it where the run's own
    checkpoints may be lost (e.g. commit it).
    """
    from imgtrans.train.compact import compact_run

    path = compact_run(run_dir, dest)
    click.echo(f"{run_dir} -> {path} ({path.stat().st_size / 1e6:.1f} MB); continue with --resume {dest}")


def _data_options(name: str) -> list[click.Option]:
    """Options declared by the objective's config fields (metadata "cli")."""
    opts = []
    for f in dataclasses.fields(objective_class(name).config_class):
        flag = f.metadata.get("cli")
        if flag:
            opts.append(click.Option([flag, f.name], default=None, help=f.metadata.get("help", ""),
                                     type=click.Path()))
    return opts


def _init_help(name: str) -> str:
    generators = getattr(objective_class(name), "averaged", ())
    example = f", e.g. --init {generators[0]}=MODEL" if generators else ""
    return ("start network NET from trained weights (a model name, export, run folder or checkpoint)"
            f"{example} (repeatable)")


def _train_command(name: str) -> click.Command:
    data_fields = [f.name for f in dataclasses.fields(objective_class(name).config_class) if f.metadata.get("cli")]

    def callback(**kw: Any) -> None:
        from imgtrans.config import parse_sets
        from imgtrans.train.launch import RunRequest, run
        from imgtrans.train.warmstart import parse_init

        if kw["steps"] is not None and kw["epochs"] is not None:
            raise UserError("pass either --steps or --epochs, not both")
        values: dict[str, Any] = parse_sets(list(kw["set_"]))
        # Absolute paths, so a run can be resumed from any working directory.
        values.update({f"model.{f}": os.path.abspath(kw[f]) for f in data_fields if kw[f] is not None})
        if kw["steps"] is not None:
            values["train.steps"] = kw["steps"]
        if kw["epochs"] is not None:
            values.update({"train.epochs": kw["epochs"], "train.steps": 0})
        if kw["device"] is not None:
            values["train.device"] = kw["device"]
        if kw["init"]:
            values["train.init"] = tuple(f"{net}={src}" for net, src in parse_init(kw["init"]).items())
        req = RunRequest(objective=name, values=values, config_file=kw["config"], out=kw["out"],
                         resume=kw["resume"], dry_run=kw["dry_run"], quiet=kw["quiet"])
        run(req)

    params: list[click.Parameter] = [
        *_data_options(name),
        click.Option(["--out"], default="runs", show_default=True, type=click.Path(file_okay=False),
                     help="folder for run directories (NNNNN-name/)"),
        click.Option(["--config"], type=click.Path(dir_okay=False), help="JSON config (e.g. a run's config.json)"),
        click.Option(["--set", "set_"], multiple=True, metavar="KEY=VALUE",
                     help="override a setting, e.g. --set crop_size=128 --set ngf=32 (repeatable)"),
        click.Option(["--steps"], type=click.IntRange(min=1), help="total training steps"),
        click.Option(["--epochs"], type=click.FloatRange(min=0, min_open=True), help="total epochs (instead of --steps)"),
        click.Option(["--resume"], type=click.Path(file_okay=False, exists=True),
                     help="continue the run in this directory from its newest checkpoint"),
        click.Option(["--init"], multiple=True, metavar="NET=SOURCE", help=_init_help(name)),
        click.Option(["--device"], help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"),
        click.Option(["--dry-run"], is_flag=True, help="print the merged config and dataset sizes, then exit"),
        click.Option(["--quiet", "-q"], is_flag=True, help="no progress bar or messages"),
    ]
    doc = (objective_class(name).__doc__ or "").strip().splitlines()[0]
    return click.Command(name, params=params, callback=callback, help=f"Train {name}: {doc}")


def _with_model_defaults(meta: dict[str, Any], size: str | None, keep_detail: bool | None,
                         echo: bool = True) -> tuple[str | None, bool]:
    """--size and --keep-detail after the model's recorded defaults; says which it used."""
    from imgtrans.weights import recorded_settings

    size, keep_detail, used = recorded_settings(meta, size, keep_detail)
    if used and echo:
        click.echo(f"{meta.get('name', 'model')}: using its recorded settings {' '.join(used)} "
                   "(override with --size N|0 / --no-keep-detail)", err=True)
    return size, keep_detail


def _parse_size(text: str | None, meta: dict[str, Any]) -> int:
    from imgtrans.weights import run_size

    return run_size(text, meta)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output_path", metavar="OUTPUT", type=click.Path())
@click.option("-m", "--model", help="a shipped or imported model name (see `imgtrans weights list`)")
@click.option("--weights", type=click.Path(), help="weights file, training run folder, checkpoint, official .pth or exported .onnx")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), help="which generator of a two-way model")
@click.option("--size", metavar="N|train", help="run at this short side (or the training size), resize back")
@click.option("--keep-detail/--no-keep-detail", default=None,
              help="with --size: add the network's edit to the full-resolution photo, keeping its fine detail")
@click.option("--tile", type=click.IntRange(min=0), default=0, help="tile side for large images (0: automatic)")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="auto", show_default=True,
              help="auto: bf16/fp16 autocast on CUDA and on CPUs with native bf16, else fp32")
@click.option("--format", "fmt", type=click.Choice(["same", "jpg", "png"]), default="same", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace existing outputs (default: skip them, so runs resume)")
@click.option("--recursive/--no-recursive", default=True, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def translate(input_path: str, output_path: str, model: str | None, weights: str | None, direction: str | None,
              size: str | None, keep_detail: bool | None, tile: int, batch_size: int, device: str, precision: str,
              fmt: str, overwrite: bool, recursive: bool, quiet: bool) -> None:
    """Translate a photo or a folder of photos (mirrored into OUTPUT) with a model.

    A shipped model may record the settings its figures were measured with (e.g. --size train
    --keep-detail); they apply unless given here."""
    from tqdm import tqdm

    from imgtrans.pipelines.folders import plan
    from imgtrans.pipelines.shard import folder_shard
    from imgtrans.pipelines.translate import TranslateConfig, Translator
    from imgtrans.weights import load_generator

    if bool(model) == bool(weights):
        raise UserError("pass exactly one of -m NAME or --weights PATH")
    with folder_shard() as shard:  # under torchrun: this process's share of the files
        # Planned before any model loads, so a bad path fails fast.
        work, jobs = shard.plan(lambda: plan(input_path, output_path, fmt, recursive, overwrite))
        loaded = load_generator(model or weights, direction)
        size, keep_detail = _with_model_defaults(loaded.meta, size, keep_detail, echo=shard.is_main)
        config = TranslateConfig(size=_parse_size(size, loaded.meta), tile=tile, batch_size=batch_size,
                                 precision=precision, keep_detail=keep_detail)
        translator = Translator(loaded.net, loaded.meta, device=shard.device(device), config=config)
        with tqdm(total=len(jobs), unit="img", disable=quiet or not jobs or not shard.is_main,
                  dynamic_ncols=True) as bar:
            report = translator.translate_folder(input_path, output_path, jobs=jobs, progress=bar.update)
        report = shard.combine(report)
        report.skipped = work.skipped
        _summarise(report, output_path, echo=shard.is_main)


def _summarise(report: Any, output_path: str, echo: bool = True) -> None:
    """The closing lines of a folder run; exit code 1 when any file failed (on every process)."""
    rate = len(report.converted) / report.seconds if report.seconds > 0 else 0.0
    if echo:
        click.echo(f"converted {len(report.converted)}, skipped {len(report.skipped)} (already done), "
                   f"failed {len(report.failed)} in {report.seconds:.1f} s ({rate:.2f} images/s) -> {output_path}",
                   err=True)
        for path, reason in report.failed:
            click.echo(f"  failed: {path}: {reason}", err=True)
    if report.failed:
        raise SystemExit(1)


@cli.command("open-eyes")
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output_path", metavar="OUTPUT", type=click.Path())
@click.option("--reference", type=click.Path(), help="open-eye photo (or folder) of the same people, as exemplar")
@click.option("--all", "all_faces", is_flag=True, help="in-paint every face, not only those with closed eyes")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="an eye whose p(open) is below this is treated as closed")
@click.option("--weights", default="eyes", show_default=True, help="in-painter: model name, export or run folder")
@click.option("--classifier", default="eyestate", show_default=True, help="eye-state model: name, export or run folder")
@click.option("--blend", type=click.Choice(["seamless", "feather"]), default="seamless", show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="write the per-photo report as JSON")
@click.option("--device", default="cpu", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["same", "jpg", "png"]), default="same", show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("--recursive/--no-recursive", default=True, show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def open_eyes(input_path: str, output_path: str, reference: str | None, all_faces: bool, threshold: float,
              weights: str, classifier: str, blend: str, report_path: str | None, device: str, fmt: str,
              overwrite: bool, recursive: bool, quiet: bool) -> None:
    """Open closed eyes in a photo or a folder of photos (mirrored into OUTPUT)."""
    import json

    from tqdm import tqdm

    from imgtrans.faces.detect import DetectConfig, MTCNNDetector
    from imgtrans.faces.eyestate import load_eyestate
    from imgtrans.faces.inpaint import load_inpainter
    from imgtrans.io import atomic_write
    from imgtrans.pipelines.eyes import EyeConfig, EyeOpener
    from imgtrans.pipelines.folders import plan
    from imgtrans.pipelines.shard import folder_shard

    with folder_shard() as shard:  # under torchrun: this process's share of the files
        # Planned before any model loads, so a bad path fails fast.
        work, jobs = shard.plan(lambda: plan(input_path, output_path, fmt, recursive, overwrite))
        device = shard.device(device)
        opener = EyeOpener(MTCNNDetector(DetectConfig(device=device)), load_eyestate(classifier),
                           load_inpainter(weights, device=device),
                           EyeConfig(threshold=threshold, all_faces=all_faces, blend=blend))
        with tqdm(total=len(jobs), unit="img", disable=quiet or not jobs or not shard.is_main,
                  dynamic_ncols=True) as bar:
            report, photos = opener.open_folder(input_path, output_path, fmt, recursive, overwrite, reference,
                                                progress=bar.update, jobs=jobs)
        report = shard.combine(report)
        report.skipped = work.skipped
        if shard.distributed:  # every process's per-photo reports, in plan (path) order
            photos = dict(sorted(((k, v) for part in shard.gather(photos) for k, v in part.items()),
                                 key=lambda kv: Path(kv[0])))
        if shard.is_main:
            faces = sum(p["faces"] for p in photos.values())
            fixed = sum(p["fixed"] for p in photos.values())
            click.echo(f"{faces} faces found, {fixed} fixed", err=True)
            if report_path:
                text = json.dumps({"photos": photos, "failed": {str(p): r for p, r in report.failed}}, indent=2)
                atomic_write(Path(report_path), lambda tmp: Path(tmp).write_text(text + "\n"), fsync=False)
        _summarise(report, output_path, echo=shard.is_main)


@cli.command("export")
@click.option("-m", "--model", required=True, help="model name (see `imgtrans weights list`) or weights path")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), help="which generator of a two-way model")
@click.option("--format", "fmt", type=click.Choice(["onnx", "onnx-int8"]), default="onnx", show_default=True,
              help="onnx-int8: convolutions in int8, calibrated on --calibrate photos (about 2x faster on x86 CPUs)")
@click.option("--calibrate", "calibrate", type=click.Path(), help="onnx-int8: folder of photos like those to translate")
@click.option("--calibrate-size", type=click.IntRange(min=16), help="onnx-int8: calibration side (default: training size)")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="file to write, e.g. model.onnx")
@click.option("--overwrite", is_flag=True, help="replace --out if it exists (default: refuse)")
def export_model(model: str, direction: str | None, fmt: str, calibrate: str | None, calibrate_size: int | None,
                 out_path: str, overwrite: bool) -> None:
    """Export a generator for other runtimes (ONNX: dynamic batch, height and width; checked
    against torch with onnxruntime). Inputs are N x 3 x H x W in [-1, 1], H and W multiples of 4.
    `imgtrans translate --weights FILE.onnx` runs the result with onnxruntime."""
    from imgtrans.export import export_checked, require_onnx
    from imgtrans.io import refuse_existing
    from imgtrans.weights import load_generator, require_torch

    if fmt == "onnx-int8" and not calibrate:
        raise UserError("--format onnx-int8 needs --calibrate FOLDER: photos like the ones you will translate")
    refuse_existing([Path(out_path)], overwrite)
    require_onnx()  # before loading anything, so a missing extra is the only message
    loaded = load_generator(model, direction)
    require_torch(loaded, "exported again")
    if fmt == "onnx-int8":
        from imgtrans.quantize import calibration_images, export_int8

        side = calibrate_size or int(loaded.meta.get("train_size") or 256)
        images = calibration_images(calibrate, -(-side // 4) * 4)
        q = export_int8(loaded.net, out_path, loaded.meta, images)
        click.echo(f"exported {loaded.source} -> {q.path} (int8, calibrated on {q.photos} photos of {calibrate}; "
                   f"PSNR against float32 on them: mean {q.mean_psnr:.1f} dB, min {q.min_psnr:.1f} dB)")
        return
    report = export_checked(loaded.net, out_path, loaded.meta)
    click.echo(f"exported {loaded.source} -> {report.path} ({fmt}; onnxruntime matches torch within "
               f"{report.max_abs_diff:.1e} on inputs {', '.join('x'.join(map(str, s)) for s in report.shapes)})")


@cli.group()
def weights() -> None:
    """List, inspect and import model weights."""


@weights.command("list")
def weights_list() -> None:
    """Models found in weights/ and the user cache (IMGTRANS_HOME)."""
    from imgtrans.weights import list_models

    models = list_models()
    if not models:
        click.echo("no models installed yet; translate with --weights PATH or `imgtrans weights import`")
        return
    w = max(len(m["name"]) for m in models)
    t = max(len("task"), *(len(m.get("task", "")) for m in models))
    click.echo(f"{'name':<{w}}  {'task':<{t}}  {'direction':<9} {'size':>9}  {'train px':>8}  location")
    for m in models:
        mb = f"{(m.get('size') or 0) / 1e6:.1f} MB" if m.get('size') is not None else "missing"
        click.echo(f"{m['name']:<{w}}  {m.get('task', ''):<{t}}  {m.get('direction', ''):<9} {mb:>9}  "
                   f"{m.get('train_size', ''):>8}  {m.get('location', '')}")


@weights.command("info")
@click.argument("name")
def weights_info(name: str) -> None:
    """Everything the manifest records about NAME."""
    import json

    from imgtrans.weights import model_info

    click.echo(json.dumps(model_info(name), indent=2))


@weights.command("import")
@click.argument("path", type=click.Path())
@click.option("--name", required=True, help="name to use with -m")
@click.option("--direction", type=click.Choice(["AtoB", "BtoA"]), help="which generator of a two-way model")
def weights_import(path: str, name: str, direction: str | None) -> None:
    """Convert weights (official .pth, our export, run folder or checkpoint) into the user cache."""
    from imgtrans.weights import import_weights

    out = import_weights(path, name, direction)
    click.echo(f"imported {path} as {name!r} -> {out}")


def _cpu_hours(value: str, export: Path) -> float:
    """A number of hours, or "auto": the logged cost of the run the export came from."""
    if value != "auto":
        try:
            return float(value)
        except ValueError:
            raise UserError(f"--cpu-hours {value!r}: give a number of hours or 'auto'") from None
    from imgtrans.train.records import run_cost

    cost = run_cost(export.resolve().parent.parent / "stats.jsonl")  # RUN/export/NAME.safetensors
    note = f"; {cost.unthreaded} lines without a thread count taken as 1 thread" if cost.unthreaded else ""
    click.echo(f"cost of {cost.steps} steps: {cost.hours:.2f} h wall, {cost.cpu_hours:.2f} CPU hours{note}")
    return round(cost.cpu_hours, 2)


@weights.command("ship")
@click.argument("export", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="manifest name (e.g. horse2zebra)")
@click.option("--folder", type=click.Path(file_okay=False), help="weights folder (default: this repository's weights/)")
@click.option("--data", "data", required=True, help="what it was trained on")
@click.option("--command", "command", required=True, help="the exact command that reproduces it")
@click.option("--cpu-hours", required=True, metavar="HOURS|auto",
              help="training cost; auto: summed from the stats.jsonl of the export's run folder")
@click.option("--metrics", "metrics_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON object of its eval figures, stored as the entry's metrics")
@click.option("--licence", default="", help="terms the training data puts on the weights")
@click.option("--note", default="", help="anything else a user should know")
@click.option("--no-fp16", is_flag=True, help="store float32 even where fp16 is lossless")
@click.option("--default-size", metavar="N|train", help="the --size `imgtrans translate` uses unless told")
@click.option("--default-keep-detail", is_flag=True, help="`imgtrans translate` keeps detail unless told not to")
def weights_ship(export: str, name: str, folder: str | None, data: str, command: str, cpu_hours: str,
                 metrics_file: str | None, licence: str, note: str, no_fp16: bool, default_size: str | None,
                 default_keep_detail: bool) -> None:
    """Add an exported generator to a weights folder (fp16 when no output moves by 1/255) with its
    manifest entry; replaces an entry of the same name."""
    import json

    from imgtrans.ship import ShipRequest, ship
    from imgtrans.weights import repo_weights_dir, run_size

    fields: dict[str, Any] = {"data": data, "command": command, "cpu_hours": _cpu_hours(cpu_hours, Path(export))}
    if metrics_file:
        try:
            fields["metrics"] = json.loads(Path(metrics_file).read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{metrics_file}: not valid JSON ({e}); pass a JSON object of figures") from None
    fields.update({k: v for k, v in (("licence", licence), ("note", note)) if v})
    if default_keep_detail and not default_size:
        raise UserError("--default-keep-detail needs --default-size: detail is kept only when the network runs smaller")
    if default_size:
        run_size(default_size, {"train_size": 1})  # the same check `translate --size` makes
        fields["defaults"] = {"size": default_size, "keep_detail": default_keep_detail}
    req = ShipRequest(export=Path(export), name=name, folder=Path(folder) if folder else repo_weights_dir(),
                      fields=fields, fp16=not no_fp16)
    entry = ship(req)
    click.echo(f"shipped {name!r}: {req.folder / entry['file']} ({entry['storage']}, "
               f"fp16 max change {entry.get('fp16_max_diff', 'n/a')})")


@cli.group("eval")
def eval_group() -> None:
    """Measure model quality offline (judges, FID/KID, baselines side by side)."""


@eval_group.command("translate")
@click.option("-m", "--model", required=True, help="model name, export, run folder or official .pth")
@click.option("--a", "a", required=True, type=click.Path(), help="test images of domain A")
@click.option("--b", "b", required=True, type=click.Path(), help="test images of domain B")
@click.option("--a-train", type=click.Path(), help="train images of A: real-vs-real reference for FID/KID")
@click.option("--b-train", type=click.Path(), help="train images of B: real-vs-real reference for FID/KID")
@click.option("--judge", help="domain judge: name, export or run folder (see `imgtrans eval train-judge`)")
@click.option("--judge-swapped", is_flag=True,
              help="the judge's A and B are this model's B and A (e.g. judge-horse2zebra for a zebra->horse AtoB model)")
@click.option("--direction", "directions", multiple=True, type=click.Choice(["AtoB", "BtoA"]))
@click.option("--max-images", type=click.IntRange(min=0), default=0, help="per folder; 0: all")
@click.option("--size", "run_size", metavar="N|train",
              help="run the networks at this short side (or the training size) and resize back; 0: native "
                   "[default: a shipped model's recorded size, else 0]")
@click.option("--keep-detail/--no-keep-detail", default=None,
              help="with --size: as `imgtrans translate --keep-detail` [default: the model's recorded setting]")
@click.option("--no-fid", is_flag=True, help="skip FID/KID (the Inception network is the slow part)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write every figure as JSON")
@click.option("--sheet", type=click.Path(dir_okay=False), help="contact sheet PNG: inputs and outputs")
@click.option("--device", default="auto", show_default=True)
def eval_translate(model: str, a: str, b: str, a_train: str | None, b_train: str | None, judge: str | None,
                   judge_swapped: bool, directions: tuple[str, ...], max_images: int, run_size: str | None,
                   keep_detail: bool | None, no_fid: bool, json_path: str | None, sheet: str | None, device: str) -> None:
    """Judge share, judge-space Frechet distance, cycle L1, FID and KID, beside the identity and
    untrained baselines."""
    import json

    from imgtrans.eval.translate import evaluate_translation, format_table
    from imgtrans.io import atomic_write

    result = evaluate_translation(model, a, b, judge=judge, directions=list(directions) or None,
                                  max_images=max_images, device=device, fid=not no_fid, a_train=a_train,
                                  b_train=b_train, sheet=sheet, size=run_size, keep_detail=keep_detail,
                                  judge_swapped=judge_swapped, progress=lambda m: click.echo(m, err=True))
    click.echo(format_table(result))
    if json_path:
        text = json.dumps(result, indent=2)
        atomic_write(Path(json_path), lambda tmp: Path(tmp).write_text(text + "\n"), fsync=False)


@eval_group.command("eyes")
@click.option("-m", "--model", help="in-painter: name, export or run folder (omit for the baselines alone)")
@click.option("--faces", required=True, type=click.Path(), help="the faces folder (with lfw_pairs/ and closed_eyes/)")
@click.option("--max-faces", type=click.IntRange(min=0), default=100, show_default=True,
              help="held-out identities to use; 0: all")
@click.option("--classifier", help="eye-state model: also count eyes called open on closed_eyes/ before/after")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write every figure as JSON")
@click.option("--sheet", type=click.Path(dir_okay=False), help="contact sheet PNG: masked input, each system, real")
@click.option("--device", default="cpu", show_default=True)
def eval_eyes(model: str | None, faces: str, max_faces: int, classifier: str | None, json_path: str | None,
              sheet: str | None, device: str) -> None:
    """Masked SSIM/L1/PSNR, whole-face L1 and eye-landmark error on held-out faces, beside the flat
    fill, OpenCV Telea and pasted-exemplar baselines."""
    import json

    from imgtrans.eval.eyes import evaluate_eyes, format_eyes_table
    from imgtrans.io import atomic_write

    result = evaluate_eyes(model, faces, max_faces=max_faces, classifier=classifier, sheet=sheet, device=device,
                           progress=lambda m: click.echo(m, err=True))
    click.echo(format_eyes_table(result))
    if json_path:
        text = json.dumps(result, indent=2)
        atomic_write(Path(json_path), lambda tmp: Path(tmp).write_text(text + "\n"), fsync=False)


@eval_group.command("train-judge")
@click.option("--a", "a", required=True, type=click.Path(), help="train images of domain A")
@click.option("--b", "b", required=True, type=click.Path(), help="train images of domain B")
@click.option("--out", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--quiet", "-q", is_flag=True)
def eval_train_judge(a: str, b: str, out: str, steps: int, device: str, quiet: bool) -> None:
    """Train a domain classifier (A vs B) for `eval translate`; reports its held-out accuracy."""
    from imgtrans.eval.judge import train_judge

    run_dir = train_judge(a, b, out=out, steps=steps, device=device, quiet=quiet)
    click.echo(f"judge trained: {run_dir} (held-out accuracy in {run_dir / 'eval.json'})")


@cli.group("faces")
def faces_group() -> None:
    """Generate, interpolate and edit faces with a DCGAN face model (`imgtrans train dcgan`)."""


_SEED = click.IntRange(0, 2**63 - 1)
_MODEL_HELP = "face model: name, dcgan run folder or export .safetensors"


@faces_group.command("generate")
@click.option("-m", "--model", required=True, help=_MODEL_HELP)
@click.option("-n", "count", type=click.IntRange(1, 100000), default=64, show_default=True,
              help="number of faces: seeds S .. S+n-1")
@click.option("--seed", type=_SEED, default=0, show_default=True, help="first seed (one seed names one face)")
@click.option("--out", "out_path", required=True, type=click.Path(),
              help="grid image (.png, .jpg), or a folder with --separate")
@click.option("--separate", is_flag=True, help="one PNG per face in the --out folder, named by its seed")
@click.option("--cols", type=click.IntRange(min=1), help="grid columns (default: a square grid)")
@click.option("--upscale", type=click.IntRange(1, 8), default=1, show_default=True, help="enlarge pixels N times")
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace --out if it exists (default: refuse)")
def faces_generate(model: str, count: int, seed: int, out_path: str, separate: bool, cols: int | None,
                   upscale: int, device: str, overwrite: bool) -> None:
    """Faces from consecutive seeds, as one grid image or one file per face."""
    import math

    from imgtrans.pipelines import latent

    if seed + count - 1 > latent.MAX_SEED:
        raise UserError(f"--seed {seed} -n {count}: the last seed would pass {latent.MAX_SEED}")
    seeds = list(range(seed, seed + count))
    # Checked before the model loads, so a typo or an existing file fails fast.
    files = latent.face_files(out_path, seeds, overwrite) if separate else latent.check_image_path(out_path, overwrite)
    face_model = latent.load_face_model(model, device)
    images = face_model.faces(seeds)
    if isinstance(files, list):
        latent.write_faces(files, images, upscale)
    else:
        latent.write_image(out_path, latent.grid(images, cols or math.ceil(math.sqrt(count))), upscale)
    click.echo(f"{count} faces (seeds {seed}..{seeds[-1]}) from {face_model.source} -> {out_path}")


@faces_group.command("interpolate")
@click.option("-m", "--model", required=True, help=_MODEL_HELP)
@click.option("--from", "from_seed", type=_SEED, required=True, help="seed of the first face")
@click.option("--to", "to_seed", type=_SEED, required=True, help="seed of the last face")
@click.option("--steps", type=click.IntRange(2, 1000), default=8, show_default=True, help="faces in the strip")
@click.option("--mode", type=click.Choice(["slerp", "lerp", "both"]), default="slerp", show_default=True,
              help="spherical or linear path in latent space; both: one row each (lerp above)")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="strip image (.png, .jpg)")
@click.option("--upscale", type=click.IntRange(1, 8), default=1, show_default=True, help="enlarge pixels N times")
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace --out if it exists (default: refuse)")
def faces_interpolate(model: str, from_seed: int, to_seed: int, steps: int, mode: str, out_path: str, upscale: int,
                      device: str, overwrite: bool) -> None:
    """A strip of faces morphing from one seed's face into another's; its ends are those faces."""
    import torch

    from imgtrans.pipelines import latent

    latent.check_image_path(out_path, overwrite)
    face_model = latent.load_face_model(model, device)
    a, b = (latent.z_from_seed(s, face_model.nz) for s in (from_seed, to_seed))
    modes = ["lerp", "slerp"] if mode == "both" else [mode]
    images = face_model.generate(torch.cat([latent.interpolate(a, b, steps, m) for m in modes]))
    latent.write_image(out_path, latent.grid(images, steps), upscale)
    click.echo(f"{'/'.join(modes)} from seed {from_seed} to {to_seed} in {steps} steps -> {out_path}")


@faces_group.command("edit")
@click.option("-m", "--model", required=True, help=_MODEL_HELP)
@click.option("--seed", "seeds", type=_SEED, multiple=True, required=True, help="face to edit (repeat: one row each)")
@click.option("--attribute", "attributes", multiple=True, required=True, metavar="NAME=WEIGHT",
              help="move along an attribute direction, e.g. male=-2 or age=+2 (repeatable; weights are "
                   "latent distances, 2-3 is a clear change)")
@click.option("--steps", type=click.IntRange(2, 100), default=2, show_default=True,
              help="faces per row, from the original to the full edit")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="image (.png, .jpg)")
@click.option("--upscale", type=click.IntRange(1, 8), default=1, show_default=True, help="enlarge pixels N times")
@click.option("--device", default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="replace --out if it exists (default: refuse)")
def faces_edit(model: str, seeds: tuple[int, ...], attributes: tuple[str, ...], steps: int, out_path: str,
               upscale: int, device: str, overwrite: bool) -> None:
    """Edit faces by latent arithmetic: z + sum of weight x attribute direction."""
    import torch

    from imgtrans.pipelines import latent

    weights = dict(latent.parse_attribute(a) for a in attributes)
    latent.check_image_path(out_path, overwrite)
    face_model = latent.load_face_model(model, device)
    directions = face_model.directions
    latent.edit(torch.zeros(face_model.nz), weights, directions)  # names checked before any face is made
    z = latent.latents(list(seeds), face_model.nz)
    rows = [latent.edit(zi, {k: w * i / (steps - 1) for k, w in weights.items()}, directions)
            for zi in z for i in range(steps)]
    latent.write_image(out_path, latent.grid(face_model.generate(torch.stack(rows)), steps), upscale)
    change = ", ".join(f"{k} {w:+g}" for k, w in weights.items())
    click.echo(f"{len(seeds)} face(s) edited ({change}) in {steps} steps -> {out_path}")


@faces_group.command("directions")
@click.option("-m", "--model", required=True, help=_MODEL_HELP)
@click.option("--classifier", required=True, help="attribute classifiers: faceattrs run folder, export or name")
@click.option("--samples", type=click.IntRange(min=2), default=5000, show_default=True,
              help="generated faces labelled to find the directions")
@click.option("--measure", type=click.IntRange(min=1), default=200, show_default=True,
              help="other generated faces the edits are measured on")
@click.option("--strength", "strengths", type=click.FloatRange(min=0, min_open=True), multiple=True,
              default=(1.0, 2.0, 3.0), show_default=True, help="edit distances measured (repeatable)")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False),
              help="face model with directions to write (.safetensors), e.g. RUN/export/faces.safetensors")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="write the measurements as JSON")
@click.option("--device", default="cpu", show_default=True)
def faces_directions(model: str, classifier: str, samples: int, measure: int, strengths: tuple[float, ...],
                     out_path: str, report_path: str | None, device: str) -> None:
    """Find attribute directions (male, age, eyes open) from classifier labels of generated faces,
    measure how often edits along them flip the classifier, and write the model with them."""
    import json

    from imgtrans.io import atomic_write
    from imgtrans.pipelines import latent

    if not out_path.endswith(".safetensors"):
        raise UserError(f"--out {out_path}: the face model is written as a .safetensors file")
    face_model = latent.load_face_model(model, device)
    clf = latent.load_attributes(classifier, device)
    found, report = latent.direction_report(face_model, clf, classifier, samples, measure, strengths,
                                            progress=lambda m: click.echo(m, err=True))
    written = latent.with_directions(face_model, found, report, out_path)
    click.echo(latent.format_report(report))
    if report_path:
        text = json.dumps(report, indent=2)
        atomic_write(Path(report_path), lambda tmp: Path(tmp).write_text(text + "\n"), fsync=False)
    click.echo(f"directions for {', '.join(found.vectors)} -> {written}")


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; user errors become one line on stderr (code 2)."""
    try:
        cli.main(args=argv, prog_name="imgtrans", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted; continue a training run with --resume RUN_DIR", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except SystemExit as e:  # a command's own exit code (e.g. 1 when some files failed)
        return int(e.code or 0)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_cli())
