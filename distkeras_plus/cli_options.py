"""What every `dk` command shares: the user-error exception and the output-format option."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A problem the user can fix: one line on stderr, exit status 2."""

    exit_code = 2


OUTPUT_FORMAT = click.option(
    "--output-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="DK_OUTPUT_FORMAT",
    help="Human-readable text or JSON.",
)
