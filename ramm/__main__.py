"""Entry point of the `ramm` console script: every command's expected failure (bad input, a tampered or
missing file, a read-only or full disk, a folder another process holds) ends here as one line naming the
item, never a traceback."""
from __future__ import annotations

import errno
import logging
import sqlite3
import sys

from ramm.cli import build_cli
from ramm.plugins import PluginError
from ramm.utils import Locked, end_distributed_process

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def error_line(e: BaseException) -> str:
    """One line for an expected failure: an OSError names its path(s) and what the OS said."""
    if isinstance(e, OSError) and e.filename is not None or isinstance(e, OSError) and e.errno in DISK_FULL:
        where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        what = e.strerror or str(e)
        hint = " (free some space and run the command again: finished work is kept)" if e.errno in DISK_FULL else ""
        return f"{where}: {what}{hint}" if where else f"{what}{hint}"
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every SIMD build it tries
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        cli = build_cli(argv)
    except PluginError as e:  # an installed package's commands that fail to load
        print(f"ramm: error: {error_line(e)}", file=sys.stderr)
        return 1
    try:
        command, cfg, threads = cli.parse(argv)
        if command is None:  # `ramm`, `ramm train`: the help of what was named
            cfg.print_help()
            return 2
        if threads:
            # lazy: torch, not for `ramm --help`
            import torch
            torch.set_num_threads(threads)
        rc = command.run(cfg)
    except KeyboardInterrupt:
        print("ramm: interrupted", file=sys.stderr)
        rc = 130
    except (ValueError, OSError, Locked, sqlite3.Error) as e:  # BadItem is a ValueError, ConnectionError an OSError
        print(f"ramm: error: {error_line(e)}", file=sys.stderr)
        rc = 1
    rc = int(rc or 0)
    end_distributed_process(rc)  # under torchrun: no interpreter teardown for gloo's threads to abort
    return rc


if __name__ == "__main__":
    sys.exit(main())
