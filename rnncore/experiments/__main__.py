"""``python -m rnncore.experiments NAME [--quick] [--seeds 0,1,2] [--out DIR] [--jobs N]``."""

import argparse
import sys
import time

from . import EXPERIMENTS, run


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m rnncore.experiments",
                                 description="gradient-flow and training experiments")
    ap.add_argument("name", choices=EXPERIMENTS)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, runs in seconds")
    ap.add_argument("--seeds", default=None, help="comma list (default: per experiment)")
    ap.add_argument("--out", default="experiments_out", help="directory for the PNGs")
    ap.add_argument("--jobs", type=int, default=1,
                    help="worker processes for the independent runs (e.g. 2 on 2 cores)")
    args = ap.parse_args(argv)
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",") if s]
    start = time.perf_counter()
    report = run(args.name, args.quick, seeds, args.out, args.jobs)
    print(f"== {args.name}{' (quick)' if args.quick else ''}")
    print(report)
    print(f"took {time.perf_counter() - start:.1f} s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
