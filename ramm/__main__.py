"""Entry point of the `ramm` console script."""
from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from ramm.cli import build_parser
    from ramm.corpus.document import BadItem

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every SIMD build it tries
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.parse_args(argv)  # argparse's own error for the unknown arguments
    args.extra = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except (ValueError, FileNotFoundError, ConnectionError, BadItem) as e:
        print(f"ramm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ramm: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
