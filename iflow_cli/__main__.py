"""python3 -m iflow_cli --help: the `iflow` console script (standard library only)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from iflow_cli.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
