"""A stage command's help: plain text that wraps at any width, options grouped by section.

``w2w STAGE --help`` lists the arguments and the stage's own options, then names each
section of further options (``chips``, ``split``, ...) with how many it holds;
``--help-all`` lists every option, section by section. Option names are never cut short
(click puts a long name on a line of its own), and every default reads ``[default: X]``.
"""

from __future__ import annotations

import re
import textwrap
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand

_DEFAULT = re.compile(r"\[default: \((.*?)\)\]")


def show_all(ctx: typer.Context, value: bool) -> None:
    """``--help-all``: the help with every option, then exit."""
    if value and not ctx.resilient_parsing:
        ctx.meta["w2w.help_all"] = True
        typer.echo(ctx.get_help())
        raise typer.Exit()


HelpAllOpt = Annotated[
    bool,
    typer.Option(
        "--help-all",
        is_eager=True,
        expose_value=True,
        callback=show_all,
        help="Show every option, section by section, and exit.",
    ),
]


class StageCommand(TyperCommand):
    """The click command of a stage (see the module notes)."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        """Arguments, the stage's options, then each section: listed in full with
        ``--help-all``, else named."""
        arguments: list[tuple[str, str]] = []
        sections: dict[str | None, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            record = (record[0], _DEFAULT.sub(r"[default: \1]", record[1]))
            if isinstance(param, TyperArgument):
                arguments.append(record)
            else:
                panel: Any = getattr(param, "rich_help_panel", None)
                sections.setdefault(panel, []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        with formatter.section("Options"):
            formatter.write_dl(sections.pop(None, []))
        if ctx.meta.get("w2w.help_all"):
            for panel, records in sections.items():
                with formatter.section(panel[:1].upper() + panel[1:]):
                    formatter.write_dl(records)
        elif sections:
            with formatter.section("More options (--help-all describes them)"):
                width = max(40, formatter.width - formatter.current_indent)
                for name, records in sections.items():
                    names = ", ".join(r[0].split(" ", 1)[0] for r in records)
                    # Never broken at a hyphen: an option name stays whole on one line.
                    text = textwrap.fill(
                        f"{name}: {names}",
                        width=width,
                        subsequent_indent="  ",
                        break_on_hyphens=False,
                        break_long_words=False,
                    )
                    formatter.write(textwrap.indent(text, " " * formatter.current_indent) + "\n")
