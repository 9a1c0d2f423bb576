"""``python -m rnncore.experiments NAME [--quick] [--seeds 0,1,2] [--out DIR] [--jobs N]
[--cluster ADDRESS] [--data TEXT]``."""

import argparse
import os
import sys
import time

from .. import cli
from . import EXPERIMENTS, TAKES_DATA, ClaimFailed, run
from .executors import ClusterError, RunFailed, cluster_address

SEED_MAX = 2**32 - 1 - 10_000  # the experiments also draw from seed + 10 000
PROG = "python -m rnncore.experiments"


def address(text):
    """An argparse ``type``: ``local`` or a Dask scheduler's address."""
    try:
        return cluster_address(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv):
    ap = cli.Parser(prog=PROG,
                    description="gradient-flow and training experiments",
                    epilog="--quick runs each experiment at toy sizes, as a smoke test that "
                           "also asserts the direction of its claim wherever that is stable "
                           "over seeds at that size (it fails otherwise). The experiments "
                           "have no size flags, so nothing overrides --quick.")
    ap.add_argument("name", type=cli.choice_list(EXPERIMENTS),
                    help="one of " + ", ".join(EXPERIMENTS))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, runs in seconds")
    ap.add_argument("--seeds", default=None, type=cli.int_list(0, SEED_MAX),
                    help="comma list of distinct non-negative seeds (default: per experiment)")
    ap.add_argument("--out", default="experiments_out", help="directory for the PNGs")
    ap.add_argument("--jobs", type=cli.at_least(1, 256), default=None,
                    help="worker processes for the independent runs (default 1; e.g. 2 on 2 "
                         "cores); with --cluster local, the LocalCluster's workers "
                         "(default: one per core)")
    ap.add_argument("--cluster", type=address, default=None, metavar="ADDRESS",
                    help="run the independent runs on the Dask scheduler at ADDRESS "
                         "(tcp://HOST:PORT), or on a LocalCluster of --jobs workers started "
                         "here (local); the results are those of a local run")
    ap.add_argument("--data", default=None,
                    help=f"text file to train on ({', '.join(TAKES_DATA)} only; default: the "
                         "shakespeare corpus if installed, else the generated words corpus)")
    args = ap.parse_args(argv)
    if len(args.name) != 1:
        ap.error("argument name: give one experiment")
    args.name = args.name[0]
    if args.data is not None:
        if args.name not in TAKES_DATA:
            ap.error(f"--data: the {args.name} experiment does not read a text "
                     f"(only {', '.join(TAKES_DATA)} does)")
        if not os.path.isfile(args.data):
            ap.error(f"--data: no such file: {args.data!r:.200}")
    cli.make_out_dir(ap, "--out", args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        report = run(args.name, args.quick, args.seeds, args.out, args.jobs, args.data,
                     args.cluster)
    except (ClusterError, ClaimFailed, RunFailed) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        raise SystemExit(2 if isinstance(err, ClusterError) else 1) from None
    print(f"== {args.name}{' (quick)' if args.quick else ''}")
    print(report)
    print(f"took {time.perf_counter() - start:.1f} s")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
