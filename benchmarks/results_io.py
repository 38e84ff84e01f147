"""What every benchmark script does around its measurement: the ``--out`` and ``--table`` flags, the
facts of the sitting (date, load average) and the results file the docs' tables are tied to, so each
script holds only what it measures and how its table reads."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def parser(doc: str) -> argparse.ArgumentParser:
    """A command line with ``--out`` (the results file) and ``--table`` (reprint one, run nothing)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, help="results file to write")
    parser.add_argument("--table", type=Path, help="print the table of a results file and exit")
    return parser


def reprint(args: argparse.Namespace, table: Callable[[dict], str]) -> bool:
    """With ``--table FILE``: print that file's table and say so (the caller then runs nothing)."""
    if args.table is None:
        return False
    print(table(json.loads(args.table.read_text())))
    return True


def write(args: argparse.Namespace, table: Callable[[dict], str], rows: list, **facts: Any) -> dict:
    """The results (``facts``, the date and load average of this sitting, then ``rows``) written to
    ``--out`` when given, and their table printed."""
    results = {
        **facts,
        "date": time.strftime("%Y-%m-%d"),
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return results
