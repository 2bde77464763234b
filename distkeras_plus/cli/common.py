"""What every `dk` command shares: one place that turns errors into one line and an exit status,
`--debug` before or after the subcommand, and the output-format option."""

from __future__ import annotations

import os
from typing import Any

import click

from distkeras_plus.errors import DkError
from distkeras_plus.quiet import VERBOSE_ENV, log_path

DEBUG_KEY = "distkeras_plus.debug"


class UserError(click.ClickException):
    """A problem the user can fix: one line on stderr, exit status 2."""

    exit_code = 2


class InternalError(click.ClickException):
    """A failure the user did not cause: one line, exit status 1."""

    exit_code = 1


def _debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[DEBUG_KEY] = True


def debug_option() -> click.Option:
    return click.Option(
        ["--debug"],
        is_flag=True,
        envvar="DK_DEBUG",
        expose_value=False,
        is_eager=True,
        callback=_debug,
        help="Show full tracebacks.",
    )


def _verbose(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[VERBOSE_ENV] = "1"  # read by `quiet`, here and in the processes started after


def verbose_option() -> click.Option:
    return click.Option(
        ["-v", "--verbose"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_verbose,
        help=f"Show what the JVM, Spark and TensorFlow write on stderr (also {VERBOSE_ENV}=1).",
    )


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DkCommand(click.Command):
    """A command that also takes `--debug` after its name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params += [debug_option(), verbose_option()]


class DkGroup(click.Group):
    """A group whose commands and subgroups are `DkCommand`s and `DkGroup`s. At the top, every
    error leaves as one line: `DkError` (what a user can fix) with exit status 2, anything else
    as an internal error with exit status 1; `--debug` shows the traceback instead."""

    command_class = DkCommand
    group_class = type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params += [debug_option(), verbose_option()]

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:
            return super().invoke(ctx)
        try:
            result = super().invoke(ctx)
            log_path().unlink(missing_ok=True)  # a run that went well has nothing to look back at
            return result
        except click.UsageError as e:
            # Without Click's usage lines: one line, as for every other mistake.
            raise UserError(e.format_message()) from e
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if ctx.meta.get(DEBUG_KEY):
                raise
            if isinstance(e, DkError):
                raise UserError(one_line(e)) from e
            raise InternalError(
                f"internal error: {type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)"
            ) from e


OUTPUT_FORMAT = click.option(
    "--output-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="DK_OUTPUT_FORMAT",
    help="Human-readable text or JSON.",
)
