"""Ready experiments on gradient flow and training of deep recurrent stacks.

    python -m rnncore.experiments NAME [--quick] [--seeds 0,1,2] [--out DIR] [--jobs N]
                                       [--cluster ADDRESS]  (a Dask scheduler, or local)
                                       [--data TEXT]   (regularise: the text to train on)

NAME is one of ``EXPERIMENTS``; each module's docstring states the published claim it
tests and how. Every experiment prints a table, writes PNGs into ``--out`` and reports
its seeds; its independent seeded runs go to an executor (``executors``: this process,
``--jobs`` local processes, or a Dask cluster, ``--cluster``). ``--quick`` shrinks it to
seconds (the test suite runs that mode) and is a smoke test: it fails (``ClaimFailed``)
when the direction of the claim, checked wherever it is stable over seeds at quick size
(``Report.checks``), does not hold.
"""

import importlib

from .executors import executor_for

EXPERIMENTS = ("depth", "vanishing", "clipping", "adding", "bidirectional", "dropout", "init",
               "hdetach", "memory", "regularise")
TAKES_DATA = ("regularise",)  # the experiments that read --data
# module names: "init" would shadow nothing here, but reads better as what it studies
MODULES = {"init": "initialisation"}
DEFAULT_SEEDS = {"vanishing": (0,), "bidirectional": (0, 1, 2), "adding": (0, 1, 2),
                 "depth": (0, 1, 2), "clipping": (0, 1, 2), "dropout": (0, 1, 2),
                 "init": (0, 1, 2), "hdetach": (0, 1, 2),
                 "memory": (0, 1, 2, 3, 4), "regularise": (0, 1, 2)}


class ClaimFailed(AssertionError):
    """A --quick run whose result goes against the direction of the experiment's claim."""


def get(name):
    """The module of experiment ``name`` (``run(quick, seeds, out, executor) -> Report``)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{MODULES.get(name, name)}")


def run(name, quick=False, seeds=None, out="experiments_out", jobs=None, data=None,
        cluster=None):
    """Run experiment ``name``; ``jobs`` > 1 spreads its independent seeded runs over that
    many worker processes, ``cluster`` (an address, or "local" for a LocalCluster of
    ``jobs`` workers) over a Dask cluster (``executors.executor_for``; the results are the
    same on any); ``data``, a text file, for the experiments in ``TAKES_DATA``."""
    seeds = tuple(DEFAULT_SEEDS[name] if seeds is None else seeds)
    module = get(name)
    extra = {}
    if data is not None:
        if name not in TAKES_DATA:
            raise ValueError(f"--data: the {name} experiment does not read a text "
                             f"(only {', '.join(TAKES_DATA)} does)")
        extra["data"] = data
    with executor_for(jobs, cluster) as executor:
        report = module.run(quick=quick, seeds=seeds, out=out, executor=executor, **extra)
    failed = [claim for claim, ok in report.checks if not ok]
    if quick and failed:
        raise ClaimFailed(f"{name} --quick (seeds {','.join(map(str, seeds))}): the result "
                          f"goes against the claim: {failed[0]}")
    return report
