"""The suite's pytest-xdist scheduler (tests/conftest.py), on a suite of its own run by a real
pytest with two workers: the files that share a stack run whole on one worker, and a worker that
dies takes only the test it was running with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The suite's conftest, loaded from its file under another name: this suite's own `tests`
# package must not be the repository's.
CONFTEST = f"""
import importlib.util
import sys

import pytest

sys.path.append({str(ROOT)!r})
path = {str(ROOT / "tests" / "conftest.py")!r}
spec = importlib.util.spec_from_file_location("suite_conftest", path)
suite_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(suite_conftest)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    return suite_conftest.OneWorkerFilesScheduling(config, log)
"""

# Each test notes the worker that ran it.
RECORDING = """
import json, os
from pathlib import Path

def note(name):
    with open(Path(__file__).parent.parent / "ran.jsonl", "a") as f:
        f.write(json.dumps([name, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")
"""


def test_a_shared_stacks_file_runs_on_one_worker_and_a_crash_takes_only_its_test(
    tmp_path: Path,
) -> None:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "__init__.py").write_text("")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tests / "recording.py").write_text(RECORDING)
    # tests/test_api.py is one of ONE_WORKER_FILES.
    (tests / "test_api.py").write_text(
        "from tests.recording import note\n"
        + "".join(f"def test_api_{i}():\n    note('api_{i}')\n" for i in range(8))
    )
    (tests / "test_other.py").write_text(
        textwrap.dedent(
            """
            import os
            from tests.recording import note

            def test_crashes_its_worker():
                note("crash")
                os._exit(1)
            """
        )
        + "".join(f"def test_other_{i}():\n    note('other_{i}')\n" for i in range(8))
    )

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "--no-loadscope-reorder",
            "-o",
            "addopts=",
            "tests",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )

    output = run.stdout + run.stderr
    assert "1 failed, 16 passed" in output, output
    assert "test_crashes_its_worker" in output and "crashed" in output, output
    ran = [json.loads(line) for line in (tmp_path / "ran.jsonl").read_text().splitlines()]
    names = [name for name, _ in ran]
    assert names.count("crash") == 1, names  # run once, not again on the next worker
    assert sorted(set(names)) == sorted(
        ["crash", *(f"api_{i}" for i in range(8)), *(f"other_{i}" for i in range(8))]
    )
    assert len({worker for name, worker in ran if name.startswith("api_")}) == 1, ran
