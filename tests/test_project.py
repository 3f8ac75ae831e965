"""The project's own conventions: notebooks, pipeline and lock files agree with each other."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib

import nbformat
import pytest
import yaml

from mnist_tl import config

NOTEBOOKS = sorted((config.PROJECT_ROOT / "notebooks").glob("*.ipynb"))
DVC = yaml.safe_load((config.PROJECT_ROOT / "dvc.yaml").read_text())
PARAMS = config.load_params()


def parameters_cell(nb):
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


def defined_names(source: str) -> set[str]:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_well_formed(path):
    nb = nbformat.read(path, as_version=4)
    assert re.fullmatch(r"\d\d_[a-z_]+\.ipynb", path.name)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "Goals" in first.source and "\n- " in first.source
    parameters_cell(nb)
    assert "reports_dir" in defined_names(parameters_cell(nb).source)
    for cell in nb.cells:
        if cell.cell_type == "code":
            if not cell.source.startswith("# NBVAL_CHECK_OUTPUT"):
                assert not cell.outputs and cell.execution_count is None, (
                    f"stale output in a cell nbval does not check:\n{cell.source}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_parameter(path):
    import papermill

    found = set(papermill.inspect_notebook(str(path)))
    assert found == defined_names(parameters_cell(nbformat.read(path, as_version=4)).source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_is_a_stage_whose_parameters_exist(path):
    stages = [s for s in DVC["stages"].values() if f"notebooks/{path.name}" in s["cmd"]]
    assert len(stages) == 1, f"{path.name} must be run by exactly one dvc stage"
    stage = stages[0]
    passed = set(re.findall(r"-p (\w+) ", stage["cmd"]))
    known = defined_names(parameters_cell(nbformat.read(path, as_version=4)).source)
    assert passed <= known, f"dvc passes parameters the notebook does not define: {passed - known}"
    for key in re.findall(r"\$\{([\w.]+)\}", stage["cmd"]):
        section, name = key.split(".")
        assert name in PARAMS[section]
        assert key in stage["params"], f"{key} is used but not declared in params"
    assert f"notebooks/{path.name}" in stage["deps"]


def test_conda_lock_matches_uv_lock():
    lock = tomllib.loads((config.PROJECT_ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"] if p.get("version")}
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)",
                           (config.PROJECT_ROOT / "requirements-lock.txt").read_text(), re.M))
    assert pins, "requirements-lock.txt holds no pins"
    stale = {n: (v, locked.get(n)) for n, v in pins.items() if locked.get(n) != v}
    assert not stale, f"requirements-lock.txt is stale; run `make lock`: {stale}"
    for name in ("torch", "torchvision", "dvc", "papermill", "jupyterlab"):
        assert name in pins


def _root_seen_from(cwd, **env):
    environment = {k: v for k, v in os.environ.items() if k != "MNIST_TL_ROOT"} | env
    code = "from mnist_tl import config; print(config.PROJECT_ROOT)"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_project_root_is_the_checkout_the_work_runs_in(tmp_path):
    """A copy of the repository (as `dvc exp run --temp` makes) receives its stages'
    outputs, not the checkout the package is installed from."""
    copy = tmp_path / "copy"
    (copy / "src" / "mnist_tl").mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    (copy / "notebooks").mkdir()
    assert _root_seen_from(copy) == str(copy.resolve())
    assert _root_seen_from(copy / "notebooks") == str(copy.resolve())  # papermill's cwd
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert _root_seen_from(elsewhere) == str(config.PROJECT_ROOT)
    assert _root_seen_from(copy, MNIST_TL_ROOT=str(elsewhere)) == str(elsewhere.resolve())
