"""Run one notebook as a pipeline stage: papermill, atomically, timed.

    python -m mnist_tl.pipeline notebooks/01_data_exploration.ipynb \
        -p reports_dir reports -p seed 0

The executed copy goes to ``reports/notebooks/`` (the source notebook is never
executed in place) and only after the whole notebook succeeded; a failed run
is kept under ``build/failed/`` for debugging. Wall time and peak memory of
the run go to ``reports/runtime/<notebook>.json``; the memory is that of this
process, the kernel and the worker processes it starts, together.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import yaml

from mnist_tl import config
from mnist_tl.io import atomic_path, write_json
from mnist_tl.provenance import software


def _memory_bytes(process: psutil.Process) -> tuple[int, int]:
    """(private, shared) resident bytes of a process: Linux's counters in
    /proc/<pid>/status (cheap, unlike a page-table walk), shared being the
    file-backed pages (libraries) and shared memory (tensors handed between
    processes); elsewhere RSS, all counted as private."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{process.pid}/status").read_text().splitlines() if ":" in line)
        kib = {key: int(fields[key].split()[0]) for key in ("RssAnon", "RssFile", "RssShmem")}
        return kib["RssAnon"] * 1024, (kib["RssFile"] + kib["RssShmem"]) * 1024
    except (OSError, KeyError, ValueError):
        return process.memory_info().rss, 0


@contextmanager
def peak_memory(interval: float = 0.5):
    """Yields a dict whose ``"mb"`` ends as the peak memory of this process and
    its descendants together (the notebook's kernel and the worker processes it
    starts), sampled every ``interval`` seconds: each one's private memory, plus
    the largest shared part once, since they map the same libraries and tensors."""
    peak = {"mb": 0.0}
    done = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not done.wait(interval):
            private, shared = 0, 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    own, mapped = _memory_bytes(process)
                except psutil.Error:
                    continue  # ended between listing and reading
                private, shared = private + own, max(shared, mapped)
            peak["mb"] = max(peak["mb"], (private + shared) / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


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
    with atomic_path(output) as tmp, peak_memory() as peak:
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
    peak_mb = peak["mb"]
    write_json(
        config.REPORTS_DIR / "runtime" / f"{notebook.stem}.json",
        {"notebook": notebook.name, "wall_seconds": round(wall, 1),
         "peak_memory_mb": round(peak_mb), "parameters": parameters,
         "software": software()},
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
