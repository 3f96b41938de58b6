"""The ``degen`` entry point: the Typer app and the error boundary.

Library errors become user-facing here and only here: a :class:`~degen.errors.UsageError`
prints one line and exits 2, any other :class:`~degen.errors.DegenError` exits 1,
Ctrl-C exits 130. Commands import their heavy dependencies inside their bodies so
``degen --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from degen.cli import compare as compare_cmd
from degen.cli import doctor as doctor_cmd
from degen.cli import extend as extend_cmd
from degen.cli import guard as guard_cmd
from degen.cli import memory as memory_cmd
from degen.cli import profile as profile_cmd
from degen.cli import run as run_cmd
from degen.cli import scan as scan_cmd
from degen.cli import tune as tune_cmd
from degen.errors import DegenError, UsageError

app = typer.Typer(
    name="degen",
    help="Find, explain, tune away and cut off degenerate LLM generations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("run", help=run_cmd.HELP)(run_cmd.run)
app.command("scan", help=scan_cmd.HELP)(scan_cmd.scan)
app.command("profile", help=profile_cmd.HELP)(profile_cmd.profile_cmd)
app.command("tune", help=tune_cmd.HELP)(tune_cmd.tune)
app.command("compare", help=compare_cmd.HELP)(compare_cmd.compare)
app.command("report", help=tune_cmd.REPORT_HELP)(tune_cmd.report_cmd)
app.command("extend", help=extend_cmd.HELP)(extend_cmd.extend_cmd)
app.command("fit-runaway", help=extend_cmd.FIT_HELP)(extend_cmd.fit_runaway_cmd)
app.command("guard", help=guard_cmd.HELP)(guard_cmd.guard)
app.command("memory", help=memory_cmd.HELP)(memory_cmd.memory)
app.command("doctor", help=doctor_cmd.HELP)(doctor_cmd.doctor)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        from degen import __version__

        typer.echo(f"degen {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, prog_name="degen", standalone_mode=True)
    except UsageError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except DegenError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
