"""Where every bench writes its result: one JSON file per run, its target lines and the
self-checks line.

    path = results.write("dhcp", quick, doc, out)   # out/dhcp[-quick]-<time>.json
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def stamped(name: str, quick: bool, out: Path) -> Path:
    """`out/<name>[-quick]-<time>` (no suffix), `out` made if missing."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return out / f"{name}{'-quick' if quick else ''}-{stamp}"


def write(name: str, quick: bool, doc: dict[str, Any], out: Path) -> Path:
    """`doc` as `out/<name>[-quick]-<time>.json`; its path."""
    path = stamped(name, quick, out).with_suffix(".json")
    path.write_text(json.dumps(doc, indent=1, default=str))
    return path


def self_checks_line(checks: Iterable[dict[str, Any]]) -> str:
    """`self-checks: all passed`, or each failed check with its problems."""
    failed = [c for c in checks if not c["ok"]]
    return "self-checks: " + ("all passed" if not failed else "FAILED: " + "; ".join(
        f"{c['name']}: {c['problems']}" for c in failed))


def target_line(t: dict[str, Any], measured: str | None = None) -> str:
    """`target <n> <bound>: <measured> (met|NOT met|not measured; <detail>)` of one target
    row; `measured`: the figure as the bench writes it (default: as stored)."""
    met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
    shown = t["measured"] if measured is None else measured
    return f"target {t['target']} {t['bound']}: {shown} ({met}; {t['detail']})"
