"""The trajectory viewer (searchr2_jax/viewer.py, launch/view.py): escaping, size, and the page as headless Chromium
renders it (a screenshot that is not blank, no script error, filters read from the URL hash, draft beside
regeneration, two dumps side by side)."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from searchr2_jax import viewer
from searchr2_jax.rl.rewards import RewardTerms
from searchr2_jax.rollout import dump
from searchr2_jax.rollout import types as T

from .rollout import trajectories as tr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVIL = "</script><script>document.title='PWNED'</script><img src=x onerror=\"document.body.dataset.pwned=1\"> & \u2028"


def _records(trajs, step=5, kind="train"):
    terms = RewardTerms(em=[float(t.answer in t.job.golden_answers) for t in trajs],
                        useful=[float(len(t.searches)) for t in trajs], total=[1.0] * len(trajs))
    recs = dump.dump_records(trajs, tr.TOK, terms, kind=kind, step=step)
    return [json.loads(json.dumps(dataclasses.asdict(r))) for r in recs]


def _evil_records():
    job = T.Job([1], question="Who wrote " + EVIL + "?", golden_answers=("Beta",), group_id=1, metadata={"id": "e"})
    steps = [(f"<think> {EVIL} </think><search> {EVIL} </search>", [tr.Passage("x", EVIL, EVIL)]),
             (f"<answer> {EVIL} </answer>", None)]
    draft = [steps[0], ("<answer> draft </answer>", None)]
    return _records([tr.trajectory(job, steps, draft_steps=draft, cut=2, scores=[-1.0, -2.0, -0.5])])


# ------------------------------------------------------------------------------------------------ without a browser


def test_model_text_cannot_close_the_data_block_or_become_markup():
    recs = _evil_records()
    html = viewer.page(viewer.Side(EVIL, recs), title=EVIL)
    # Only the page's own three scripts open and close; the title is escaped text.
    assert html.count("<script") == html.count("</script>") == 3
    assert "<title>&lt;/script&gt;" in html and "PWNED'</script>" not in html
    block = re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', html, re.S).group(1)
    assert not set(block) & {"<", ">", "&", "\u2028"}
    data = json.loads(block)
    assert data["a"]["label"] == EVIL and data["a"]["records"][0]["question"] == recs[0]["question"]
    assert data["passages"] == [[EVIL, EVIL]] and data["a"]["records"][0]["turns"][0]["passages"][0]["p"] == 0


def test_passages_are_stored_once_and_the_records_are_left_as_they_were():
    recs = _records(tr.world_trajectories(30))
    before = json.dumps(recs)
    (out,), table = viewer.compact([recs])
    assert json.dumps(recs) == before
    refs = [p for r in out for t in r["turns"] for p in t["passages"]]
    assert len(table) < len(refs) and len({tuple(x) for x in table}) == len(table)
    originals = [p for r in recs for t in r["turns"] for p in t["passages"]]
    assert [(p["id"], *table[q["p"]], p["gold"]) for p, q in zip(originals, refs)] == \
        [(p["id"], p["title"], p["text"], p["gold"]) for p in originals]


def test_500_trajectories_fit_in_5_mb(tmp_path):
    recs = _records(tr.world_trajectories(500))
    size = viewer.write_page(str(tmp_path / "v.html"), viewer.Side("a", recs))
    assert sum(r["revised"] for r in recs) > 100
    assert size <= 5_000_000, size


def _workdir(tmp_path):
    """A workdir with an eval dump at steps 5 and 9 and a train dump at step 9."""
    work = tmp_path / "run"
    trajs = tr.world_trajectories(20)
    for kind, step in (("eval", 5), ("eval", 9), ("train", 9)):
        terms = RewardTerms(em=[float(step == 9 and i % 2 == 0) for i in range(len(trajs))])
        dump.write_jsonl(dump.dump_path(str(work), kind, step),
                         dump.dump_records(trajs, tr.TOK, terms, kind=kind, step=step))
    return str(work)


def test_launch_view_writes_one_page_and_compares_steps(tmp_path):
    work = _workdir(tmp_path)
    view = [sys.executable, os.path.join(ROOT, "launch", "view.py")]
    done = subprocess.run(view + [f"--workdir={work}", "--compare=5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    page = open(os.path.join(work, "view.html"), encoding="utf-8").read()
    data = json.loads(re.search(r'id="viewer-data">(.*?)</script>', page, re.S).group(1))
    assert data["a"]["label"].endswith("eval step 9") and data["b"]["label"].endswith("eval step 5")
    assert "20 trajectories beside 20" in done.stdout
    assert "http" not in re.sub(r'id="viewer-data">.*?</script>', "", page, flags=re.S)  # nothing to fetch


def test_sources_resolve_and_bad_input_is_named(tmp_path):
    work = _workdir(tmp_path)
    assert viewer.workdir_dump(work)[:2] == ("eval", 9)
    assert viewer.workdir_dump(work, kind="train")[:2] == ("train", 9)
    assert viewer.workdir_dump(work, step=5)[:2] == ("eval", 5)
    with pytest.raises(FileNotFoundError, match="no train dump at step 5"):
        viewer.workdir_dump(work, step=5, kind="train")
    assert viewer.load_compare(f"{work}:5", None, "eval").label.endswith("eval step 5")
    with pytest.raises(ValueError, match="needs --workdir"):
        viewer.load_compare("5", None, None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"schema": 1}\n')
    done = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "view.py"), f"--jsonl={bad}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "bad.jsonl: row 1: not a trajectory record" in done.stderr


# ------------------------------------------------------------------------------------------------ headless Chromium


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed once (apt-get, as root) where it is missing; the tests skip without it."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium is not installed and apt-get cannot install it here (not root)")
    try:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900, check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"chromium could not be installed: {e}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get install chromium left no chromium on PATH")
    return found


def _chromium(binary, url, *args, timeout=120):
    cmd = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           "--hide-scrollbars", "--virtual-time-budget=3000", *args, url]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, time.perf_counter() - t0


def dom(binary, path, fragment="", console_ok=False):
    """The page's DOM once its script ran (`--dump-dom`), and chromium's wall time. The page's console (errors,
    uncaught exceptions) must stay empty unless `console_ok`."""
    done, wall = _chromium(binary, f"file://{path}{fragment}", "--dump-dom", "--enable-logging=stderr", "--v=0")
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console_ok or not console, console
    return done.stdout, wall


def screenshot(binary, path, png, fragment="", size=(1280, 800)):
    """The command the README's screenshot is made with."""
    _chromium(binary, f"file://{path}{fragment}", f"--screenshot={png}", f"--window-size={size[0]},{size[1]}")


def _status(html):
    m = re.search(r'<div id="viewer-status" data-state="(\w+)"[^>]*>(.*?)</div>', html, re.S)
    assert m, html[:2000]
    return m.group(1), m.group(2)


def _rows(html):
    return re.findall(r'<div class="row[^"]*" data-i="(\d+)" data-revised="(\d)" data-correct="(\d)"', html)


@pytest.mark.slow
def test_the_page_renders_without_script_errors_and_is_not_blank(chromium, tmp_path):
    from PIL import Image

    recs = _records(tr.world_trajectories(40))
    path = str(tmp_path / "v.html")
    viewer.write_page(path, viewer.Side("run a", recs))
    html, _ = dom(chromium, path)
    assert _status(html)[0] == "ok", _status(html)
    assert len(_rows(html)) == 40
    png = str(tmp_path / "v.png")
    screenshot(chromium, path, png, "#filter=revised")
    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 800)
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200, len(colours)
    assert max(n for n, _ in colours) < 0.9 * 1280 * 800  # no single colour fills the page


def test_the_revised_filter_in_the_url_shows_only_revised_trajectories_with_draft_and_regeneration(chromium,
                                                                                                    tmp_path):
    recs = _records(tr.world_trajectories(40))
    path = str(tmp_path / "v.html")
    viewer.write_page(path, viewer.Side("run a", recs))
    html, _ = dom(chromium, path, "#filter=revised")
    rows = _rows(html)
    assert _status(html)[0] == "ok"
    assert [int(i) for i, _, _ in rows] == [i for i, r in enumerate(recs) if r["revised"]]
    assert all(rev == "1" for _, rev, _ in rows)
    # The first revised trajectory is selected: its draft beside its regeneration, the first differing turn marked.
    first = next(r for r in recs if r["revised"])
    d = first["refiner"][0]
    assert 'data-role="draft"' in html and 'data-role="regeneration"' in html
    assert d["draft"]["turns"][0]["answer"] == "Bridge" and "answer: Bridge" in html
    assert f"search: {d['regeneration']['turns'][0]['query']}" in html
    assert 'class="turn diff"' in html and 'class="bars"' in html
    html, _ = dom(chromium, path, "#filter=unrevised,wrong")
    rows = _rows(html)
    assert rows and all(rev == "0" and ok == "0" for _, rev, ok in rows)
    html, _ = dom(chromium, path, "#q=" + recs[7]["id"])
    assert [i for i, _, _ in _rows(html)] == ["7"]


def test_a_script_error_is_written_into_the_page(chromium, tmp_path):
    path = tmp_path / "broken.html"
    path.write_text(viewer.page(viewer.Side("a", _evil_records())).replace('"turns":[', '"turnz":[', 1))
    html, _ = dom(chromium, str(path), console_ok=True)
    state, text = _status(html)
    assert state == "error" and "TypeError" in text


def test_model_text_stays_text_in_the_browser(chromium, tmp_path):
    path = str(tmp_path / "v.html")
    viewer.write_page(path, viewer.Side(EVIL, _evil_records()), title=EVIL)
    html, _ = dom(chromium, path)
    assert _status(html)[0] == "ok"
    assert "<title>&lt;/script&gt;" in html and "<title>PWNED" not in html
    assert "data-pwned" not in html and "<img" not in html
    assert "&lt;/script&gt;&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in html


def test_two_dumps_side_by_side_on_the_same_questions(chromium, tmp_path):
    trajs = tr.world_trajectories(20)
    a = _records(trajs, step=5)
    b = _records(trajs, step=9)
    for r in b[::2]:
        r["em"] = 1.0 - r["em"]
    path = str(tmp_path / "v.html")
    viewer.write_page(path, viewer.Side("step 5", a), viewer.Side("step 9", b))
    html, _ = dom(chromium, path, "#filter=changed")
    assert _status(html)[0] == "ok"
    assert [int(i) for i, _, _ in _rows(html)] == list(range(0, 20, 2))
    assert 'class="side-a"' in html and 'class="side-b"' in html and "B: step 9" in html


def test_a_page_of_500_trajectories_opens(chromium, tmp_path, capsys):
    """The open time is reported, not asserted: a figure of the machine (launch/view.py's goal: under 2 s)."""
    recs = _records(tr.world_trajectories(500))
    path = str(tmp_path / "v.html")
    size = viewer.write_page(path, viewer.Side("500", recs))
    html, wall = dom(chromium, path)
    state, _ = _status(html)
    assert state == "ok" and len(_rows(html)) == 500
    script_ms, load_ms = (float(x) for x in re.search(r'data-ms="([\d.]+)" data-load-ms="([\d.]+)"', html).groups())
    with capsys.disabled():
        print(f"\nviewer: 500 trajectories, {size / 1e6:.2f} MB; rendered {load_ms:.0f} ms after navigation "
              f"(its script {script_ms:.0f} ms); chromium --dump-dom, start to exit, {wall:.2f} s")
