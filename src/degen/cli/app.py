"""The ``degen`` entry point: the Typer app and the error boundary.

Library errors become user-facing here and only here: a :class:`~degen.errors.UsageError`
prints one line (whatever the message quotes) and exits 2, any other
:class:`~degen.errors.DegenError` exits 1, Ctrl-C exits 130. What Click itself refuses
(an unknown flag, a value that is not a number, a missing argument) is one line too,
with the help to read, and exits 2. Commands import their heavy dependencies inside
their bodies so ``degen --help`` stays fast.
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

# The error Click raises for what it cannot parse, from the Click that Typer uses
# (its own copy since Typer 0.20, the click package before).
ClickError: type[Exception] = next(c for c in typer.BadParameter.__mro__
                                   if c.__name__ == "ClickException")

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


def one_line(text: str) -> str:
    """``text`` on one line: a message that quotes a library's may hold several."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def click_error(e: Exception) -> str:
    """Click's message for ``e`` on one line, with where to read the command's help
    (Click's own print is a usage line and a box)."""
    msg = one_line(e.format_message())  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    return f"{msg.rstrip('.')}; see {ctx.command_path} --help" if ctx else msg


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, prog_name="degen", standalone_mode=False)
    except ClickError as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # bare `degen`: the help is printed
            typer.echo(f"error: {click_error(e)}", err=True)
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except typer.Abort as e:
        interrupted = isinstance(e.__cause__, KeyboardInterrupt)
        typer.echo("interrupted" if interrupted else "aborted", err=True)
        sys.exit(130 if interrupted else 1)
    except UsageError as e:
        typer.echo(f"error: {one_line(str(e))}", err=True)
        sys.exit(2)
    except DegenError as e:
        typer.echo(f"error: {one_line(str(e))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
