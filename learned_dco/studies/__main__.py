"""``python -m learned_dco.studies [STUDY] [--list] [--quick] [--out DIR] [--seed S]``.

The same as ``learned-dco reproduce`` (which the CLI wires to :data:`STUDIES`); useful
without the console script.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from learned_dco.studies import STUDIES

    ap = argparse.ArgumentParser(prog="python -m learned_dco.studies", description=__doc__.split("\n\n")[0])
    ap.add_argument("study", nargs="?", default="dco", help=f"one of {', '.join(STUDIES)} (default: dco)")
    ap.add_argument("--list", action="store_true", help="describe the studies and exit")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (minutes on a 2-core CPU)")
    ap.add_argument("--out", default=None, help="output directory (default: results/STUDY)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.list:
        for s in STUDIES.values():
            print(f"{s.name:8s} {s.description}\n{'':8s} paper: {s.paper}")
        return 0
    if args.study not in STUDIES:
        ap.error(f"unknown study {args.study!r}; expected one of {', '.join(STUDIES)}")
    if args.quick:  # compile-bound: the CLI's cheaper XLA settings (learned_dco/app/xla.py)
        from learned_dco.app import xla

        xla.apply_defaults(xla.QUICK_DEFAULTS)
    results = STUDIES[args.study].run(args.out or f"results/{args.study}", quick=args.quick, seed=args.seed)
    for c in results["claims"]:
        print(f"{c['verdict']:18s} {c['id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
