"""No code path unpickles a file or runs code shipped with a model: a source scan of the package and launchers."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each pattern loads or runs code from a file: pickle (and numpy/torch loaders that fall back to it), a model
# repository's own Python (`trust_remote_code`), and the builtins that run strings.
UNSAFE = {
    "pickle": re.compile(r"\b(c?pickle|dill|joblib|shelve|marshal)\b"),
    "allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "torch.load": re.compile(r"\btorch\.load\b"),
    "trust_remote_code": re.compile(r"trust_remote_code\s*=\s*True"),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\s*\("),
}


def _sources():
    for top in ("searchr2_jax", "launch", "configs"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(dirpath, f)


@pytest.mark.parametrize("name", sorted(UNSAFE))
def test_no_unsafe_loading(name):
    hits = []
    for path in _sources():
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                code = line.split("#", 1)[0]
                if UNSAFE[name].search(code):
                    hits.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_the_scan_finds_what_it_looks_for():
    assert UNSAFE["pickle"].search("import pickle") and UNSAFE["eval/exec"].search("x = eval(s)")
    assert not UNSAFE["eval/exec"].search("model.eval()")
    assert UNSAFE["allow_pickle"].search("np.load(p, allow_pickle=True)")
