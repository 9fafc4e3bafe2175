"""`python -m bench <command>`: ipam's benchmarks.

    python -m bench booking [--quick] [--scale X] [--scenarios t7,t1,...] [--out bench/results]
    python -m bench contention [--quick] [--out bench/results]
    python -m bench dhcp [--quick] [--out bench/results]
    python -m bench compaction [--quick] [--out bench/results]
    python -m bench lists [--quick] [--out bench/results]
    python -m bench reads [--quick] [--seconds N] [--out bench/results]
    python -m bench soak [--seconds N] [--quick] [--out bench/results]
    python -m bench storage [--quick] [--ips N] [--out bench/results]
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "booking":
        from .booking import main as booking

        return booking(rest)
    if command == "contention":
        from .contention import main as contention

        return contention(rest)
    if command == "dhcp":
        from .dhcp import main as dhcp

        return dhcp(rest)
    if command == "compaction":
        from .compaction import main as compaction

        return compaction(rest)
    if command == "lists":
        from .lists import main as lists

        return lists(rest)
    if command == "reads":
        from .reads import main as reads

        return reads(rest)
    if command == "soak":
        from .soak import main as soak

        return soak(rest)
    if command == "storage":
        from .storage import main as storage

        return storage(rest)
    print(f"unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
