"""Run one notebook as a pipeline stage: papermill, atomically, timed.

    python -m mnist_tl.pipeline notebooks/01_data_exploration.ipynb \
        -p reports_dir reports -p seed 0

The executed copy goes to ``reports/notebooks/`` (the source notebook is never
executed in place) and only after the whole notebook succeeded; a failed run
is kept under ``build/failed/`` for debugging. Wall time and peak memory of
the run go to ``reports/runtime/<notebook>.json``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mnist_tl import config
from mnist_tl.io import atomic_path, write_json
from mnist_tl.provenance import environment


def run_notebook(
    notebook: str | Path,
    parameters: dict[str, Any],
    output: str | Path | None = None,
) -> Path:
    import papermill

    notebook = Path(notebook).resolve()
    output = Path(output) if output else config.REPORTS_DIR / "notebooks" / notebook.name
    start = time.perf_counter()
    print(f"[{notebook.stem}] running with {parameters}", flush=True)
    with atomic_path(output) as tmp:
        try:
            papermill.execute_notebook(
                notebook, tmp, parameters=parameters, kernel_name="python3",
                cwd=notebook.parent, progress_bar=False, log_output=True,
            )
        except BaseException:
            failed = config.PROJECT_ROOT / "build" / "failed" / notebook.name
            failed.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.copy(tmp, failed)
                print(f"[{notebook.stem}] FAILED; the partly executed notebook is {failed}",
                      file=sys.stderr)
            raise
    wall = time.perf_counter() - start
    # The kernel is a child process of this one; ru_maxrss is in KiB on Linux.
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    write_json(
        config.REPORTS_DIR / "runtime" / f"{notebook.stem}.json",
        {"notebook": notebook.name, "wall_seconds": round(wall, 1),
         "peak_rss_mb": round(peak_mb), "parameters": parameters,
         "environment": environment()},
    )
    print(f"[{notebook.stem}] done in {wall:.1f} s (peak memory {peak_mb:.0f} MB)", flush=True)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=None)
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="notebook parameter; VALUE is parsed as YAML (as papermill -y does)",
    )
    args = parser.parse_args(argv)
    # A terminated run (Ctrl-C, kill, a CI timeout) unwinds normally, so no
    # temporary or half-written file is left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parameters = {name: yaml.safe_load(value) for name, value in args.parameter}
    run_notebook(args.notebook, parameters, args.output)


if __name__ == "__main__":
    main()
