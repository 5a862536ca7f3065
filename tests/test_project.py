"""The project's promises to readers: the README's two commands, CI, Binder, the book's shape."""

from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "radiolens run" in main_job and "--book" in main_job
    assert "pytest" in tests
    for command in commands:
        assert '"torch==2.13.0"' in command  # the CPU wheel on this kind of machine
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci, ".ci/run must call the README's test command verbatim"


def test_binder_environment_matches_the_pip_route():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "torch==2.13.0" in pip
    assert any(line.startswith("-e .[book]") for line in pip)
    assert any(line.startswith("jupyterlab-myst") for line in pip)  # MyST renders in JupyterLab
    post_build = (REPO / "postBuild").read_text()
    assert "radiolens run --quick" in post_build  # the image starts with the quick study cached


def _chapters() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [entry["file"] for part in toc["parts"] for entry in part["chapters"]]


def test_toc_lists_every_chapter_file_and_nothing_missing():
    listed = {Path(f).name for f in _chapters()} | {"index"}
    on_disk = {p.stem for p in (REPO / "book").glob("*.md")}
    assert listed == on_disk
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"  # papermill executes, the book renders
    assert config["launch_buttons"]["binderhub_url"]


@pytest.mark.parametrize("name", [f for f in _chapters() if Path(f).name[:2].isdigit()])
def test_chapter_has_the_teaching_structure(name):
    path = REPO / f"{name}.md"
    text = path.read_text()
    notebook = jupytext.read(path)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged parameters"
    assert "quick" in code[0].source and "cache_dir" in code[0].source
    assert "Learning objectives" in text and "*Time: about" in text  # an estimate for students
    assert "## Summary" in text
    assert "{exercise" in text and re.search(r"\{solution(-start)?\} ex-[a-z-]+-\d+\n:class: dropdown", text)
    assert "Try this" in text
    assert re.search(r"^\(ch-[a-z-]+\)=\n# ", text, flags=re.M), "a label before the title, for {numref}"
    assert "../shared" not in text and "PAPER.md" not in text  # readers never have it


def test_chapter_mode_note_names_the_study_its_outputs_come_from():
    from radiolens.book import mode_note
    from radiolens.config import load_config

    quick, full = mode_note(True).data, mode_note(False).data
    assert "Run mode: quick" in quick and f"{load_config(quick=True)['cohort']['n_cases']} synthetic cases" in quick
    assert "Run mode: full" in full and f"{load_config()['cohort']['n_cases']} synthetic cases" in full
    assert f"up to {load_config()['finetune']['epochs']} epochs" in full
    assert "will differ" in full and "not the paper's results" in full and "not the paper's results" in quick
    bound = mode_note(False, text_bound=True).data
    assert "every number its text quotes from them, come from the full default study" in bound and "will differ" not in bound


def test_every_methods_chapter_has_a_scaffolded_exercise_with_a_check():
    for name in _chapters():
        if Path(name).name[:2] not in {"02", "03", "04", "05", "06", "07", "08", "09"}:
            continue
        notebook = jupytext.read(REPO / f"{name}.md")
        sources = [c.source for c in notebook.cells]
        tags = [c.metadata.get("tags", []) for c in notebook.cells]
        start = next(i for i, s in enumerate(sources) if "```{exercise-start}" in s)
        scaffold = next(i for i in range(start, len(sources)) if notebook.cells[i].cell_type == "code")
        assert "...  #" in sources[scaffold], f"{name}: the scaffold leaves something to complete"
        solution = next(i for i, t in enumerate(tags) if "solution" in t)
        check = next(i for i, t in enumerate(tags) if "check" in t)
        assert scaffold < solution < check, name
        assert "check(" in sources[check], name


# --------------------------------------------------------------------------------------------
# the package's shape: data-flow layers, no import circles, small modules, lint
# --------------------------------------------------------------------------------------------
PACKAGE = REPO / "radiolens"

#: Each part of the package and its place in the data flow: a module may import only from its
#: own layer or layers below. Layer 0 is what every step shares (defined once, imported
#: everywhere); then the steps in the order data flows; then what runs or shows them all.
LAYERS: dict[str, int] = {
    "_utils": 0, "errors": 0, "naming": 0, "cache": 0, "tasks": 0, "glossary": 0, "config": 0,
    "data": 1,
    "radiomics": 2,
    "models": 3,
    "finetune": 4,
    "embeddings": 5,
    "lens": 6,
    "plotting": 7, "report": 7,
    "pipeline": 8, "run_folder": 8, "bundle": 8,
    "book": 9, "cli": 9, "__main__": 9,
}

#: Modules allowed over the line limit until their owners split them, with the reason. An
#: entry for a module that no longer exists or is under the limit fails the test: delete it.
OVER_LIMIT: dict[str, str] = {}
MAX_LINES = 900


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The radiolens modules ``path`` imports, at module level or inside functions."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import mod" imports the module pkg.mod when there is one, else pkg
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("radiolens") and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return None if len(parts) == 1 else LAYERS.get(parts[1])


def test_every_part_of_the_package_has_a_layer():
    missing = sorted({n.split(".")[1] for n in _modules() if "." in n and _layer(n) is None})
    assert not missing, f"give {missing} a layer in tests/test_project.py LAYERS (its place in the data flow)"


def test_no_import_runs_back_up_the_data_flow():
    # the root package is the facade (it only defines __version__ and re-exports lazily), so
    # importing it is importing nothing
    upward = [
        f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
        for name, targets in _graph().items()
        if name != "radiolens"
        for target in targets
        if target != "radiolens" and _layer(target) > _layer(name)
    ]
    assert not upward, "imports that run back up the data flow:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_circles():
    graph = {name: {t for t in targets if t != "radiolens"} for name, targets in _graph().items()}
    cycles = _cycles(graph)
    assert not cycles, "import circles (lazy imports inside functions count too): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checks_find_what_they_look_for():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    graph = _graph()
    assert "radiolens.models.inputs" in graph["radiolens.embeddings"]  # from-imports resolve to modules
    assert "radiolens.data.contract" in graph["radiolens.data.cohort"]
    assert "radiolens.tasks" in graph["radiolens.pipeline"]


def test_no_module_is_over_the_line_limit():
    lengths = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    too_long = {f: n for f, n in lengths.items() if n > MAX_LINES and f not in OVER_LIMIT}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concept): {too_long}"
    stale = [f for f in OVER_LIMIT if lengths.get(f, 0) <= MAX_LINES]
    assert not stale, f"OVER_LIMIT lists modules that are gone or short enough now: {stale}"


def test_ruff_finds_nothing():
    pytest.importorskip("ruff")
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "radiolens", "tests", "benchmarks"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert done.returncode == 0, f"ruff check (configuration in pyproject.toml) found:\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
