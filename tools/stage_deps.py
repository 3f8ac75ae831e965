"""Rewrite the ``src/`` dependencies of every stage in dvc.yaml to the import closure of
its command (the rule ``tests/test_project.py`` checks): ``python tools/stage_deps.py``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_project import _entry_points, import_closure  # noqa: E402


def main() -> None:
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    stages = yaml.safe_load(text)["stages"]
    out, stage, in_deps = [], None, False
    for line in text.splitlines():
        if match := re.match(r"^  (\w+):$", line):
            stage = match.group(1)
        if line == "    deps:":
            in_deps = True
            out.append(line)
            out += [f"      - {d}" for d in sorted(import_closure(_entry_points(stages[stage])))]
            continue
        if in_deps and line.startswith("      - "):
            if not line.strip()[2:].startswith("src/"):
                out.append(line)
            continue
        in_deps = False
        out.append(line)
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
