"""The notebooks run against the current code: every code cell of each notebook executes in one namespace (shell
and magic lines, which only the Colab set-up cell has, are skipped), with QUICK sizes."""

import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _is_shell(line: str) -> bool:
    return line.lstrip().startswith(("!", "%"))


@pytest.mark.slow  # loads SmolLM2 and trains a few steps: ~1 min on 2 CPU cores
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch, tmp_path):
    nb = json.loads(path.read_text())
    monkeypatch.setenv("SEARCHR2_NOTEBOOK_QUICK", "1")
    monkeypatch.chdir(ROOT)
    namespace = {"__name__": "__notebook__"}
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert cells, f"{path.name}: no code cells"
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        if any(_is_shell(line) for line in source.splitlines()):
            assert "COLAB" in source, f"{path.name} cell {i}: shell/magic lines belong only in the Colab set-up cell"
            continue
        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb"}
