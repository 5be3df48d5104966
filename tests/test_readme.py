"""The sessions of README.md and docs/ (the README's whole life, docs/try-it.md's endpoints one
by one, docs/operations.md's operators' actions) run against real `make run` stacks print what
their pages show (devtools/readme_sessions.py); and the format's rules, on small documents of
their own."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from devtools.readme_sessions import (
    Command,
    FormatError,
    Outcome,
    Session,
    compare,
    match_lines,
    parse,
    parse_files,
    record,
    run_sessions,
    session_files,
)

ROOT = Path(__file__).resolve().parent.parent

DOC = textwrap.dedent(
    """\
    # A page

    <!-- session: demo STEP=1 -->
    <!-- stack-output -->
    ```console
    $ make run
    ...
      Seller API         http://127.0.0.1:8000
    ...
    ```

    <!-- wait-until: ^ready$ -->
    ```console
    $ curl -s -d '{
      "a": 1
    }' localhost:${API_PORT:-8000}/x
    {"receipt":"72743bc1-8d91-44cf-95df-dbf6137edc73","date":"2026-11-24 01:38:20"}
    $ cat > /tmp/f <<'EOF'
    one
    EOF
    ```

    ```json
    {"not": "run"}
    ```
    <!-- session-end -->

    ```console
    $ echo outside any session
    ```

    <!-- session: other -->
    ```console
    $ echo other
    other
    ```
    <!-- session-end -->

    <!-- session: demo -->
    ```console
    $ curl -s localhost:${API_PORT:-8000}/y
    {"receipt":"72743bc1-8d91-44cf-95df-dbf6137edc73","took":"0.079859s"}
    ```
    <!-- session-end -->
    """
)


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "page.md"
    path.write_text(DOC)
    return path


def test_sessions_commands_and_directives_are_read(doc: Path) -> None:
    demo, other = parse(doc)
    assert (demo.name, demo.env, other.name) == ("demo", {"STEP": "1"}, "other")
    commands = [command for _, command in demo.commands]
    # A command runs on while bash finds it open (a quote, a here-document); resumed sessions
    # follow on; other fences and blocks outside a session are text.
    assert [command.text.splitlines()[0] for command in commands] == [
        "make run",
        "curl -s -d '{",
        "cat > /tmp/f <<'EOF'",
        "curl -s localhost:${API_PORT:-8000}/y",
    ]
    assert commands[1].text.endswith("localhost:${API_PORT:-8000}/x")
    assert commands[2].expected == []
    assert commands[1].line == 14
    stack, waited = demo.blocks[0], demo.blocks[1]
    assert stack.stack_output and waited.wait_until == "^ready$"


@pytest.mark.parametrize(
    "text",
    [
        "<!-- wait-until: x -->\n```console\n$ true\n```\n",
        "<!-- session: s -->\n```console\noutput before any command\n```\n",
        "<!-- session: s -->\n<!-- not-run -->\n<!-- session-end -->\n",
        "<!-- session: s -->\n<!-- not-run -->\n```json\n{}\n```\n",
        "<!-- session: s -->\n<!-- wait-until: ( -->\n```console\n$ true\n```\n",
        "<!-- session: s -->\n```console\n$ echo 'never closed\n```\n",
    ],
)
def test_a_malformed_page_is_refused_naming_its_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.md"
    path.write_text(text)
    with pytest.raises(FormatError, match=r"bad\.md:\d+"):
        parse(path)


def _outcomes(*outputs: list[str]) -> list[Outcome]:
    return [Outcome(output) for output in outputs]


def test_outputs_compare_modulo_ids_dates_and_durations(doc: Path) -> None:
    demo = parse(doc)[0]
    banner = ["Temporal CLI", "", "  Seller API         http://127.0.0.1:8000", "worker polling"]
    same = _outcomes(
        banner,
        ['{"receipt":"0d9a0c39-5d8a-4f4f-9a51-0e0e5f1c2b3a","date":"2027-01-02 03:04:05"}'],
        [],
        ['{"receipt":"0d9a0c39-5d8a-4f4f-9a51-0e0e5f1c2b3a","took":"1.5s"}'],
    )
    assert compare(demo, same) == []
    # The same receipt twice in the page must be one receipt twice in the run.
    two_receipts = [
        *same[:3],
        Outcome(['{"receipt":"11111111-2222-3333-4444-555555555555","took":"1.5s"}']),
    ]
    [mismatch] = compare(demo, two_receipts)
    assert mismatch.command.line == 41
    assert str(mismatch).startswith(f"{doc}:41: session demo: $ curl -s localhost")
    assert '-{"receipt":"<uuid-1>","took":"<duration>"}' in mismatch.diff
    assert '+{"receipt":"<uuid-2>","took":"<duration>"}' in mismatch.diff
    # make run's output: the shown lines in order, `...` any lines.
    assert compare(demo, [Outcome(["Temporal CLI"]), *same[1:]])[0].command.line == 6


def test_wildcards() -> None:
    assert match_lines(["...", "b", "...", "d"], ["a", "b", "c", "d"]) == [(1, 2), (3, 4)]
    assert match_lines(["...", "b", "...", "d"], ["a", "b", "d", "e"]) is None
    assert match_lines(["a", "..."], ["a", "b"]) == [(0, 1)]
    assert match_lines(["a", "b"], ["a"]) is None


def test_record_rewrites_only_a_session_that_differs(doc: Path) -> None:
    demo, other = parse(doc)
    banner = ["Temporal CLI", "", "  Seller API         http://127.0.0.1:8000", "  Data  x", "end"]
    outcomes = {
        "demo": _outcomes(
            banner,
            ['{"receipt":"0d9a0c39-5d8a-4f4f-9a51-0e0e5f1c2b3a","date":"2027-01-02 03:04:05"}'],
            ["written"],
            ['{"receipt":"0d9a0c39-5d8a-4f4f-9a51-0e0e5f1c2b3a","took":"1.5s"}'],
        ),
        "other": _outcomes(["other"]),
    }
    assert record(doc, [demo, other], outcomes) == ["demo"]
    text = doc.read_text()
    # Every output of the session from the run (one consistent run), make run's parts kept.
    assert "...\n  Seller API         http://127.0.0.1:8000\n...\n" in text
    assert '{"receipt":"0d9a0c39-5d8a-4f4f-9a51-0e0e5f1c2b3a","date":"2027-01-02 03:04:05"}' in text
    assert "EOF\nwritten\n```" in text
    assert "72743bc1" not in text
    assert [compare(session, outcomes[session.name]) for session in parse(doc)] == [[], []]


def test_a_session_name_lives_in_one_file(tmp_path: Path) -> None:
    first, second = tmp_path / "one.md", tmp_path / "two.md"
    first.write_text("<!-- session: s -->\n```console\n$ true\n```\n<!-- session-end -->\n")
    second.write_text(first.read_text())
    with pytest.raises(FormatError, match=r"two\.md: session s is in .*one\.md already"):
        parse_files([first, second])


def test_the_pages_show_what_their_sessions_print() -> None:
    """Every session of README.md and docs/ on real `make run` stacks at once (each its own
    ports and DATA_DIR); then the same outputs against a page altered in one line must fail,
    naming that line."""
    files = session_files()
    assert files[0] == ROOT / "README.md"
    sessions = parse_files(files)
    where = {session.name: session.path.relative_to(ROOT).as_posix() for session in sessions}
    assert {
        "whole-life": "README.md",
        "try-it": "docs/try-it.md",
        "operator-actions": "docs/operations.md",
    }.items() <= where.items()
    outcomes = run_sessions(sessions, jobs=len(sessions))
    mismatches = [m for session in sessions for m in compare(session, outcomes[session.name])]
    assert not mismatches, (
        "the pages' sessions print something else now; if that is right, `make readme` "
        "writes the new outputs into them:\n\n" + "\n\n".join(map(str, mismatches))
    )

    try_it = next(session for session in sessions if session.name == "try-it")
    healthz = next(command for _, command in try_it.commands if command.text.endswith("/healthz"))
    for altered in [
        [line.replace('"ok"', '"degraded"') for line in healthz.expected],
        [*healthz.expected, "one more line"],
        [line.replace("7233", "7234") for line in healthz.expected],
    ]:
        found = compare(_with_expected(try_it, healthz, altered), outcomes["try-it"])
        assert [mismatch.command.line for mismatch in found] == [healthz.line]
        assert f"docs/try-it.md:{healthz.line}: session try-it" in str(found[0])
    # Another date is no difference.
    dispatch = next(command for _, command in try_it.commands if "/fulfill" in command.text)
    other_day = [line.replace('"date":"20', '"date":"19') for line in dispatch.expected]
    assert other_day != dispatch.expected
    assert compare(_with_expected(try_it, dispatch, other_day), outcomes["try-it"]) == []


def _with_expected(session: Session, command: Command, expected: list[str]) -> Session:
    """`session` with `command` showing `expected` instead."""
    changed = dataclasses.replace(command, expected=expected)
    blocks = [
        dataclasses.replace(
            block, commands=[changed if c is command else c for c in block.commands]
        )
        for block in session.blocks
    ]
    return dataclasses.replace(session, blocks=blocks)
