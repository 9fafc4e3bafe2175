"""The types of the values operators type on the command line, checked before any request."""

from __future__ import annotations

import uuid
from typing import Any

import click


class UuidText(click.ParamType):
    """An id (a UUID), kept as its canonical text: `'abc' is not a valid UUID.` otherwise."""

    name = "uuid"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            self.fail(f"{value!r} is not a valid UUID.", param, ctx)


UUID = UuidText()


def split_commas(value: str | None) -> list[str]:
    """`a, b,,c` as ["a", "b", "c"]: the comma-separated lists of `keys create`."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]
