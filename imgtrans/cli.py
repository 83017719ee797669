"""The `imgtrans` command line: parsing and user-facing messages only."""

from __future__ import annotations

import dataclasses
import os
import sys
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
        return objective_names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in objective_names():
            return None
        return _train_command(name)


@cli.group(cls=TrainGroup)
def train() -> None:
    """Train a model on your own folders (run under torchrun for several processes)."""


def _data_options(name: str) -> list[click.Option]:
    """Options declared by the objective's config fields (metadata "cli")."""
    opts = []
    for f in dataclasses.fields(objective_class(name).config_class):
        flag = f.metadata.get("cli")
        if flag:
            opts.append(click.Option([flag, f.name], default=None, help=f.metadata.get("help", ""),
                                     type=click.Path(file_okay=False)))
    return opts


def _train_command(name: str) -> click.Command:
    data_fields = [f.name for f in dataclasses.fields(objective_class(name).config_class) if f.metadata.get("cli")]

    def callback(**kw: Any) -> None:
        from imgtrans.config import parse_sets
        from imgtrans.train.launch import RunRequest, run

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
        click.Option(["--device"], help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps"),
        click.Option(["--dry-run"], is_flag=True, help="print the merged config and dataset sizes, then exit"),
        click.Option(["--quiet", "-q"], is_flag=True, help="no progress bar or messages"),
    ]
    doc = (objective_class(name).__doc__ or "").strip().splitlines()[0]
    return click.Command(name, params=params, callback=callback, help=f"Train {name}: {doc}")


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
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    return 0


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_cli())
