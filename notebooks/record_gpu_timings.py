"""Record notebook 7's GPU timings: ``python notebooks/record_gpu_timings.py`` on a GPU.

Runs the two measurements of notebook 7 (``nbhelpers.measure_pointwise`` and
``nbhelpers.measure_modules``) at the notebook's GPU sizes and writes them, with the card's
name, the date and the versions, to ``notebooks/data/gpu_timings.json`` (or the path given),
which the notebook shows when it runs on a machine without a GPU.
"""

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import nbhelpers  # noqa: E402
import numpy as np  # noqa: E402

import rnncore  # noqa: E402
from rnncore import backend  # noqa: E402

SIZES = (128, 512, 2048)  # the notebook's live GPU sizes: keep the two in step
CONFIGS = [(1, 256, 64, 100), (3, 512, 64, 100)]


def commit() -> str:
    """The checkout's commit: $RNNCORE_COMMIT, else ``git rev-parse``, else "unknown"."""
    if os.environ.get("RNNCORE_COMMIT"):
        return os.environ["RNNCORE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else HERE / "data" / "gpu_timings.json"
    if not backend.cuda_available():
        print("no CUDA GPU here: nothing recorded", file=sys.stderr)
        return 1
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    versions = f"cupy {cupy.__version__}, numpy {np.__version__}, rnncore {rnncore.__version__}"
    try:
        import torch

        versions += f", torch {torch.__version__} (cuDNN {torch.backends.cudnn.version()})"
        torch.backends.cuda.matmul.allow_tf32 = False  # CuPy does not use TF32 either
        torch.backends.cudnn.allow_tf32 = False
    except ImportError:
        pass
    nbhelpers.measure_modules("cuda", CONFIGS[:1], repeats=5)  # warm-up: clocks, caches
    record = {
        "device": name,
        "date": datetime.date.today().isoformat(),
        "versions": versions,
        "python": platform.python_version(),
        "commit": commit(),
        "command": "python notebooks/record_gpu_timings.py",
        "pointwise": nbhelpers.measure_pointwise("cuda", 64, SIZES, repeats=51),
        "modules": nbhelpers.measure_modules("cuda", CONFIGS, repeats=15),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
