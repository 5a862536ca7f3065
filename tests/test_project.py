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
