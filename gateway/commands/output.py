"""How the operator commands print: a table of key columns for people, JSON or YAML of
the API's own objects for programs.

A change the API answers with nothing (release, delete, revoke) prints one line for
people and nothing in JSON or YAML: there is no object to print.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click
from tabulate import tabulate


def cell(value: Any) -> str:
    """One table cell: lists joined by commas, nothing shown as `-`."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None or value == "" else str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """`rows` as a plain table under upper-case headers, one row a line."""
    text = tabulate([[cell(row.get(c)) for c in columns] for row in rows],
                    headers=[c.upper() for c in columns], tablefmt="plain",
                    disable_numparse=True)
    return "\n".join(line.rstrip() for line in text.splitlines())


def show(answer: Any, output: str, rows: Sequence[Mapping[str, Any]],
         columns: Sequence[str]) -> None:
    """Print `answer` as JSON or YAML, or its `rows` as a table of `columns`."""
    if output == "json":
        click.echo(json.dumps(answer, indent=2))
    elif output == "yaml":
        import yaml  # only when asked: the table is the common case

        click.echo(yaml.safe_dump(answer, sort_keys=False), nl=False)
    else:
        click.echo(table(rows, columns))


def confirm(output: str, line: str) -> None:
    """Say that a change answered by nothing was made, to a person only."""
    if output == "table":
        click.echo(line)
