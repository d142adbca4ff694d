"""Table 2: columns in the paper's order from FlashRAG jsonl and Search-R1 parquet, averages, outputs, --compare."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from searchr2_jax.data.qa import read_qa_files
from searchr2_jax.eval import table as table_lib

from ..data.conftest import JSONL_FIXTURES, fixture_path, write_parquet

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def records(examples, em):
    return [dict(id=ex.id, source=ex.data_source, em=float(e), acc=float(e), f1=float(e), searches=1,
                 response_tokens=10) for ex, e in zip(examples, em)]


def test_files_land_in_the_seven_paper_columns_in_order_and_others_after(tmp_path):
    paths = [fixture_path(JSONL_FIXTURES[k]) for k in ("bamboogle", "nq", "musique", "triviaqa", "2wikimultihopqa",
                                                        "popqa", "hotpotqa")]
    rows = [{"id": f"r{i}", "question": f"q{i}", "golden_answers": ["a"], "data_source": src}
            for i, src in enumerate(["hotpot_qa", "wikisum", "wikisum"])]
    paths.append(write_parquet(rows, tmp_path / "other.parquet"))
    examples = read_qa_files(paths)
    table = table_lib.build_table({"agent": records(examples, np.ones(len(examples)))}, {}, n_boot=20)
    assert table["columns"] == ["NQ", "TriviaQA", "PopQA", "HotpotQA", "2Wiki", "Musique", "Bamboogle", "wikisum"]
    assert table["methods"]["agent"]["HotpotQA"]["n"] == sum(ex.data_source == "hotpotqa" for ex in examples) + 1
    assert table["methods"]["agent"]["wikisum"]["n"] == 2


def test_the_average_is_the_mean_of_dataset_means_with_a_stratified_interval():
    ex = [type("E", (), dict(id=f"{s}{i}", data_source=s))() for s, n in (("nq", 100), ("bamboogle", 20))
          for i in range(n)]
    em = [1.0] * 50 + [0.0] * 50 + [1.0] * 20  # NQ 0.5, Bamboogle 1.0
    row = table_lib.build_table({"rag": records(ex, em)}, {}, n_boot=300)["methods"]["rag"]
    assert row["NQ"]["em"] == 0.5 and row["Bamboogle"]["em"] == 1.0
    assert row["Avg"]["em"] == pytest.approx(0.75)  # not the pooled 70/120
    lo, hi = row["Avg"]["em_ci"]
    assert lo < 0.75 < hi and hi - lo < row["NQ"]["em_ci"][1] - row["NQ"]["em_ci"][0]
    assert row["Avg"]["datasets"] == 2 and row["Avg"]["n"] == 120


def test_methods_on_other_questions_are_refused():
    ex = [type("E", (), dict(id=f"q{i}", data_source="nq"))() for i in range(4)]
    with pytest.raises(ValueError, match="other questions"):
        table_lib.build_table({"a": records(ex, [1] * 4), "b": records(ex[:3], [1] * 3)}, {})


def _table(tmp_path, name, **settings):
    ex = [type("E", (), dict(id=f"q{i}", data_source="nq"))() for i in range(10)]
    base = {"retriever": {"backend": "bm25"}, "k": 3, "corpus": {"sha256": "x", "rows": 10}, "max_turns": 4,
            "decoding": "greedy", "model": name}
    t = table_lib.build_table({"agent": records(ex, [1] * 5 + [0] * 5)}, {**base, **settings}, n_boot=20)
    paths = table_lib.write_table(t, str(tmp_path / name))
    return paths["json"]


def test_write_table_outputs_and_compare_refuses_settings_that_change_em(tmp_path):
    a = _table(tmp_path, "a")
    b = _table(tmp_path, "b")  # another model: what a comparison is for
    c = _table(tmp_path, "c", k=5, corpus={"sha256": "y", "rows": 10})
    for ext in ("md", "csv", "png"):
        assert os.path.getsize(os.path.join(os.path.dirname(a), f"table.{ext}")) > 0
    md = open(os.path.join(os.path.dirname(a), "table.md")).read()
    assert "| agent | 50.0 [" in md and "- k: `3`" in md and "Search-R1" in md
    csv_rows = open(os.path.join(os.path.dirname(a), "table.csv")).read().splitlines()
    assert csv_rows[0] == "method,dataset,figure,value,ci_low,ci_high,n" and len(csv_rows) == 1 + 2 * 5
    ta, tc = (json.load(open(p)) for p in (a, c))
    assert [p.split(":")[0] for p in table_lib.incomparable(ta, tc)] == ["k", "corpus"]
    run = lambda x, y: subprocess.run([sys.executable, os.path.join(ROOT, "launch", "evaluate.py"),  # noqa: E731
                                       f"--compare={x},{y}"], capture_output=True, text=True)
    ok, refused = run(a, b), run(a, c)
    assert ok.returncode == 0 and "| agent | NQ | 50.0 | 50.0 | +0.0 |" in ok.stdout
    assert refused.returncode == 2 and "refused" in refused.stdout and "k: 3 vs 5" in refused.stdout
