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


# --------------------------------------------------- stage dependencies = import graph

SRC = config.PROJECT_ROOT / "src"


def _module_file(name: str):
    """The file of module ``mnist_tl...`` ``name`` (package: its ``__init__.py``), or None."""
    path = SRC.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(source: str) -> set[str]:
    """``mnist_tl`` modules a piece of code imports, with the packages they sit in."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == "mnist_tl":
                parts = name.split(".")
                found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in found if _module_file(m)}


def _code_of(path) -> str:
    if path.suffix == ".ipynb":
        cells = nbformat.read(path, as_version=4).cells
        lines = [line for c in cells if c.cell_type == "code"
                 for line in c.source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        return "\n".join(lines)
    return path.read_text()


def import_closure(entry_points) -> set[str]:
    """Every file of ``src/`` that running ``entry_points`` (scripts, notebooks, module
    names) imports, directly or not, as paths relative to the project root."""
    todo = [e for e in entry_points if not isinstance(e, str)]
    modules = {m for e in entry_points if isinstance(e, str)
               for m in _imported_modules(f"import {e}")}
    todo += [_module_file(m) for m in modules]
    seen_files = set()
    while todo:
        path = todo.pop()
        if path in seen_files:
            continue
        seen_files.add(path)
        for module in _imported_modules(_code_of(path)) - modules:
            modules.add(module)
            todo.append(_module_file(module))
    return {str(_module_file(m).relative_to(config.PROJECT_ROOT)) for m in modules}


def _entry_points(stage: dict):
    """What a stage's command runs: ``python -m module`` and the scripts and notebooks
    it names."""
    words = stage["cmd"].split()
    entries = [words[words.index("-m") + 1]] if "-m" in words else []
    entries += [config.PROJECT_ROOT / w for w in words if w.endswith((".py", ".ipynb"))]
    return entries


@pytest.mark.parametrize("name", sorted(DVC["stages"]))
def test_stage_depends_on_exactly_the_code_it_imports(name):
    """A stage reruns when, and only when, code it runs changes: its ``src/`` deps are
    the files in the import closure of its command (``__init__.py`` included)."""
    stage = DVC["stages"][name]
    declared = {d for d in stage.get("deps", []) if d.startswith("src/")}
    expected = import_closure(_entry_points(stage))
    assert declared == expected, (
        f"stage {name}: missing {sorted(expected - declared)}, "
        f"not imported {sorted(declared - expected)}")


def test_every_committed_figure_is_embedded_in_the_report():
    from mnist_tl.report import referenced_images

    reports = config.PROJECT_ROOT / "reports"
    figures = {f"figures/{p.name}" for p in (reports / "figures").glob("*.png")}
    embedded = set(referenced_images((reports / "results.md").read_text()))
    assert figures - embedded == set(), "figures no report section shows: embed or delete them"
    assert embedded - figures == set(), "the report shows figures that do not exist"
