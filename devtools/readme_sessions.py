"""Run the console sessions Markdown files show against a real `make run`, and check that each
output is still what the file says (or write what the run printed into the file).

    python -m devtools.readme_sessions check                            # README.md and docs/*.md
    python -m devtools.readme_sessions check docs/try-it.md --session try-it
    python -m devtools.readme_sessions record README.md docs/*.md       # `make readme`
    python -m devtools.readme_sessions list docs/some-page.md

The format, in the Markdown itself (comments do not show once rendered):

- `<!-- session: NAME [VAR=VALUE ...] -->` starts (or, further down, resumes) the session NAME;
  `<!-- session-end -->` stops it. Every ```console block in between belongs to it; other fences
  (```json, plain ```) are text. The VAR=VALUE settings, given once, go into the environment of
  that session's `make run` (say them in the prose too: the reader's `make run` lacks them).
- In a console block, a line starting with `$ ` is a command, followed by its continuation lines
  until bash finds it complete (an open quote or a here-document runs on), then its output up to
  the next `$ ` or the fence. A `...` line in an output stands for any number of lines.
- Directives, each in a comment of its own before a block, apply to that block:
  `<!-- wait-until: REGEX -->` runs the block's first command again (every 0.2 s, up to
  --wait-timeout) until its output matches REGEX (Python `re.search`, on the output as the file
  would show it); `<!-- stack-output -->`: the block's command is `make run` itself: not run, its
  output is compared with what this session's `make run` printed so far; `<!-- not-run -->`: shown
  only.

Each session gets a `make run` of its own (`python -m devtools.run_local`, real processes: the
Temporal dev server, a worker, the API, the fake marketplace) on free ports, with a fresh DATA_DIR
in a temporary folder, so sessions never see each other's orders. Commands run one by one in bash,
from the repository's root, with that stack's environment: API_PORT, OPS_PORT, TEMPORAL_PORT,
TEMPORAL_UI_PORT, FAKE_MARKETPLACE_PORT, WORKER_METRICS_PORT, REFERENCE_WAREHOUSE_PORT and
DATA_DIR set, so the file writes `localhost:${API_PORT:-8000}` and a reader's copy works with the
defaults. A command's `/tmp/` is the session's own scratch folder (two runs at once write no file
of the other's).

What a run prints is shown as a reader's `make run` would print it: the session's ports as their
defaults, its DATA_DIR as `<repository>/.data`, its scratch folder as `/tmp`. Then both texts are
compared modulo what differs from run to run: uuids (numbered in order of appearance within a
session, so that a receipt answered twice must be the same), the simulated carrier's tracking
numbers (likewise), ISO, VTEX and HTTP dates and times, durations (`0.08s`, `12 ms`), and the
checkout's path in `/.../.data`. Trailing spaces and carriage returns are dropped. A mismatch
prints a unified diff naming the file, its line and the session.

`record` runs the sessions and, for each session with any output that differs, rewrites all of
that session's outputs from the run (one consistent run per session: the receipt of the dispatch
is the one the order shows); a session whose outputs all match is left as it is. `make readme`
records README.md and every docs/ page that holds a session; tests/test_readme.py (in `make
test`) checks them where they live. A session lives in one file, and its name is unique across
the files of a run.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from devtools.processes import clean_environment, free_ports

ROOT = Path(__file__).resolve().parent.parent

# The ports `make run` reads (devtools/run_local.py), with their defaults.
DEFAULT_PORTS = {
    "API_PORT": 8000,
    "OPS_PORT": 8001,
    "TEMPORAL_PORT": 7233,
    "TEMPORAL_UI_PORT": 8233,
    "FAKE_MARKETPLACE_PORT": 8900,
    "WORKER_METRICS_PORT": 9464,
    # The reference warehouse, which make run starts with WAREHOUSE=http.
    "REFERENCE_WAREHOUSE_PORT": 8950,
}
# What devtools/run_local.py prints once everything listens, and the worker once it polls.
BANNER_FIRST = "Seller API"
BANNER_LAST = "Ctrl-C stops everything."
WORKER_READY = "worker polling task queue"
WILDCARD = "..."
POLL_SECONDS = 0.2

_DIRECTIVE = re.compile(
    r"^\s*<!--\s*(session-end|session:|stack-output|not-run|wait-until:)(.*?)-->\s*$"
)
_FENCE = re.compile(r"^\s*```")


@dataclass
class Command:
    """One `$ ` command of a console block and the output the file shows for it."""

    text: str
    line: int  # 1-based line of its `$ ` in the file
    expected: list[str]
    # 0-based [start, end) of its output lines in the file, for `record`.
    output_span: tuple[int, int] = (0, 0)


@dataclass
class Block:
    """One ```console block of a session."""

    line: int  # 1-based line of the fence
    commands: list[Command]
    wait_until: str | None = None
    stack_output: bool = False
    not_run: bool = False


@dataclass
class Session:
    """The blocks under `<!-- session: NAME -->` markers, in the file's order."""

    name: str
    path: Path
    env: dict[str, str] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)

    @property
    def commands(self) -> list[tuple[Block, Command]]:
        """Every command that the session runs or compares, in order."""
        return [
            (block, command)
            for block in self.blocks
            if not block.not_run
            for command in block.commands
        ]


@dataclass
class Outcome:
    """What one command printed in a run, as the file would show it."""

    output: list[str]
    returncode: int = 0
    waited_in_vain: str | None = None  # the wait-until pattern that never matched


class FormatError(ValueError):
    """The Markdown does not follow the session format; the message names the line."""


def _complete(command: str) -> bool:
    """Whether bash would run `command` as it is (no open quote, here-document or `\\`)."""
    if command.endswith("\\"):
        return False
    checked = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    message = checked.stderr
    incomplete = ("unexpected EOF", "unexpected end of file", "delimited by end-of-file")
    return not any(sign in message for sign in incomplete)


def _parse_block(lines: list[str], start: int, end: int, path: Path) -> list[Command]:
    """The commands of the console block whose content is lines[start:end] (0-based)."""
    commands: list[Command] = []
    index = start
    while index < end:
        line = lines[index]
        if not line.startswith("$ "):  # Only before the first command: outputs run to the next.
            raise FormatError(f"{path}:{index + 1}: a console block must start with a `$ ` command")
        text = line[2:]
        first = index
        index += 1
        while not _complete(text):
            if index >= end:
                raise FormatError(f"{path}:{first + 1}: the command never ends (an open quote?)")
            text += "\n" + lines[index]
            index += 1
        output_start = index
        while index < end and not lines[index].startswith("$ "):
            index += 1
        commands.append(
            Command(
                text,
                first + 1,
                [lines[i].rstrip() for i in range(output_start, index)],
                (output_start, index),
            )
        )
    return commands


def parse(path: Path) -> list[Session]:
    """The sessions of a Markdown file, in the order they first appear.

    Raises:
        FormatError: a directive outside a session or with no console block after it, a
            wait-until that is no regular expression, a console block that does not start with
            a command, a command never closed, settings given twice.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    sessions: dict[str, Session] = {}
    current: Session | None = None
    pending: list[tuple[int, str, str]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = _DIRECTIVE.match(line)
        if directive:
            name, argument = directive[1], directive[2].strip()
            if name == "session:":
                words = argument.split()
                if not words:
                    raise FormatError(f"{path}:{index + 1}: a session needs a name")
                current = sessions.setdefault(words[0], Session(words[0], path))
                settings = dict(word.split("=", 1) for word in words[1:] if "=" in word)
                if len(settings) != len(words) - 1:
                    raise FormatError(f"{path}:{index + 1}: settings are VAR=VALUE words")
                if settings and current.env:
                    raise FormatError(
                        f"{path}:{index + 1}: session {words[0]} has its settings already"
                    )
                current.env.update(settings)
            elif name == "session-end":
                if pending:
                    raise FormatError(
                        f"{path}:{pending[0][0]}: directive with no console block after it"
                    )
                current = None
            else:
                if current is None:
                    raise FormatError(f"{path}:{index + 1}: {name.rstrip(':')} outside a session")
                pending.append((index + 1, name.rstrip(":"), argument))
            index += 1
            continue
        if _FENCE.match(line):
            info = line.strip()[3:].strip()
            close = index + 1
            while close < len(lines) and not _FENCE.match(lines[close]):
                close += 1
            if pending and info != "console":
                raise FormatError(f"{path}:{pending[0][0]}: directive before a block not console")
            if info == "console" and current is not None:
                block = Block(index + 1, _parse_block(lines, index + 1, close, path))
                for at, kind, argument in pending:
                    if kind == "wait-until":
                        try:
                            re.compile(argument)
                        except re.error as error:
                            raise FormatError(f"{path}:{at}: wait-until: {error}") from None
                        block.wait_until = argument
                    elif kind == "stack-output":
                        block.stack_output = True
                    else:
                        block.not_run = True
                pending = []
                current.blocks.append(block)
            index = close + 1
            continue
        index += 1
    if pending:
        raise FormatError(f"{path}:{pending[0][0]}: directive with no console block after it")
    return list(sessions.values())


# Comparison modulo what changes from run to run. Numbered kinds keep their identity within a
# session: the receipt of a dispatch called twice must be one receipt.
_NUMBERED = [
    ("uuid", re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")),
    ("tracking", re.compile(r"\bSIM\d{10}\b")),
]
_VARYING = [
    (
        re.compile(
            r"\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\b"
        ),
        "<http-date>",
    ),
    (
        re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2}\b)?"),
        "<datetime>",
    ),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}\b"), "<date>"),
    (re.compile(r"\b\d{2}:\d{2}:\d{2}(\.\d+)?\b"), "<time>"),
    (re.compile(r"\b\d+(\.\d+)? ?(ms|s)\b"), "<duration>"),
    (re.compile(r"\b\d+\.\d+e[+-]\d+\b"), "<timestamp>"),
    # A retry's attempt number: which retry a poll catches depends on the machine's load (the
    # first attempt stays exact).
    (re.compile(r'"attempt": ([2-9]|\d{2,})\b'), '"attempt": <retry>'),
    # `make run`'s data directory, in whichever checkout it ran.
    (re.compile(r"(/[^\s/]+)+/\.data\b"), "<checkout>/.data"),
]


class Normalizer:
    """Rewrites a session's outputs, in order, into what must not vary."""

    def __init__(self) -> None:
        """Start with nothing numbered."""
        self._seen: dict[str, dict[str, int]] = {kind: {} for kind, _ in _NUMBERED}

    def line(self, text: str) -> str:
        """One output line, normalized."""
        for kind, pattern in _NUMBERED:
            text = pattern.sub(partial(self._number, kind), text)
        for pattern, replacement in _VARYING:
            text = pattern.sub(replacement, text)
        return text.rstrip()

    def _number(self, kind: str, found: re.Match[str]) -> str:
        seen = self._seen[kind]
        return f"<{kind}-{seen.setdefault(found[0], len(seen) + 1)}>"

    def lines(self, texts: Iterable[str]) -> list[str]:
        """Several lines, normalized in order."""
        return [self.line(text) if text != WILDCARD else WILDCARD for text in texts]


def _parts(lines: Sequence[str]) -> list[list[str]]:
    """The runs of lines between `...` lines (empty ones included)."""
    parts: list[list[str]] = [[]]
    for line in lines:
        if line == WILDCARD:
            parts.append([])
        else:
            parts[-1].append(line)
    return parts


def match_lines(expected: Sequence[str], actual: Sequence[str]) -> list[tuple[int, int]] | None:
    """Where each `...`-separated part of `expected` sits in `actual`, or None if it does not:
    parts in order, each as consecutive lines; `...` is any number of lines."""
    parts = _parts(expected)
    open_start, open_end = expected[:1] == [WILDCARD], expected[-1:] == [WILDCARD]
    if len(parts) == 1:
        return [(0, len(actual))] if list(expected) == list(actual) else None
    spans: list[tuple[int, int]] = []
    position = 0
    for number, part in enumerate(parts):
        if not part:
            continue
        last = len(actual) - len(part)
        candidates = range(position, last + 1)
        if number == 0 and not open_start:
            candidates = range(0, 1 if last >= 0 else 0)
        if number == len(parts) - 1 and not open_end:
            candidates = range(last, last + 1) if last >= position else range(0)
        found = next(
            (start for start in candidates if list(actual[start : start + len(part)]) == part), None
        )
        if found is None:
            return None
        spans.append((found, found + len(part)))
        position = found + len(part)
    return spans


@dataclass
class Mismatch:
    """A command whose output is not what the file shows."""

    session: str
    path: Path
    command: Command
    diff: str

    def __str__(self) -> str:
        first = self.command.text.splitlines()[0]
        return f"{self.path}:{self.command.line}: session {self.session}: $ {first}\n{self.diff}"


def compare(session: Session, outcomes: Sequence[Outcome]) -> list[Mismatch]:
    """The commands of `session` whose outcome (one per command, in order) differs from the file."""
    expected_side, actual_side = Normalizer(), Normalizer()
    mismatches = []
    for (block, command), outcome in zip(session.commands, outcomes, strict=True):
        # The stack's own output (log lines and all, mostly skipped) numbers nothing for the rest.
        sides = (Normalizer(), Normalizer()) if block.stack_output else (expected_side, actual_side)
        expected = sides[0].lines(command.expected)
        actual = sides[1].lines(outcome.output)
        shows_something = any(line != WILDCARD for line in expected)
        if match_lines(expected, actual) is not None and (
            shows_something or not block.stack_output
        ):
            continue
        notes = []
        if not shows_something:
            notes.append("(it shows nothing of make run's output but `...`)")
        if outcome.waited_in_vain:
            notes.append(f"(its output never matched wait-until {outcome.waited_in_vain!r})")
        if outcome.returncode:
            notes.append(f"(exit status {outcome.returncode})")
        diff = "\n".join(
            difflib.unified_diff(
                expected,
                actual,
                f"{session.path}:{command.line} as written",
                "as run",
                lineterm="",
                n=2,
            )
        )
        mismatches.append(Mismatch(session.name, session.path, command, "\n".join([*notes, diff])))
    return mismatches


def recorded_output(block: Block, command: Command, outcome: Outcome) -> list[str]:
    """What `record` writes for a command: the output as run; for the stack's own output, the
    parts the file shows (or `...`, the banner, `...`)."""
    actual = [line.rstrip() for line in outcome.output]
    if not block.stack_output:
        return actual
    normalizer_expected, normalizer_actual = Normalizer(), Normalizer()
    expected = normalizer_expected.lines(command.expected)
    spans = match_lines(expected, normalizer_actual.lines(actual))
    if spans is not None and any(line != WILDCARD for line in expected):
        # The same parts as the file shows, each as this run printed it.
        kept: list[str] = []
        found = iter(spans)
        for number, part in enumerate(_parts(command.expected)):
            if number:
                kept.append(WILDCARD)
            if part:
                start, end = next(found)
                kept.extend(actual[start:end])
        return kept
    first = next(i for i, line in enumerate(actual) if BANNER_FIRST in line)
    last = next(i for i, line in enumerate(actual) if BANNER_LAST in line)
    return [WILDCARD, *actual[first : last + 1], WILDCARD]


def record(
    path: Path, sessions: Sequence[Session], outcomes: dict[str, list[Outcome]]
) -> list[str]:
    """Rewrite in `path` every output of each session that has any mismatch; the names of the
    sessions rewritten."""
    lines = path.read_text(encoding="utf-8").splitlines()
    replacements: list[tuple[tuple[int, int], list[str]]] = []
    rewritten = []
    for session in sessions:
        if not compare(session, outcomes[session.name]):
            continue
        rewritten.append(session.name)
        for (block, command), outcome in zip(session.commands, outcomes[session.name], strict=True):
            replacements.append((command.output_span, recorded_output(block, command, outcome)))
    for (start, end), new in sorted(replacements, reverse=True):
        lines[start:end] = new
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rewritten


class Stack:
    """One `make run` (devtools/run_local.py) on free ports, with a fresh DATA_DIR."""

    def __init__(self, settings: dict[str, str], keep: bool = False) -> None:
        """Choose its ports and folders; `keep` leaves the folder (its log) behind."""
        self.folder = Path(tempfile.mkdtemp(prefix="readme-session-")).resolve()
        self.scratch = self.folder / "scratch"
        self.scratch.mkdir()
        self.data_dir = self.folder / "data"
        self.log_path = self.folder / "make-run.log"
        self.keep = keep
        self.ports = dict(zip(DEFAULT_PORTS, free_ports(len(DEFAULT_PORTS)), strict=True))
        self.env = clean_environment()
        self.env.update({name: str(port) for name, port in self.ports.items()})
        self.env["DATA_DIR"] = str(self.data_dir)
        self.env.update(settings)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.process: subprocess.Popen[bytes] | None = None
        # The run's port -> its default, in the places a port is written.
        self._port_pattern = re.compile(
            r"(127\.0\.0\.1:|localhost:|_PORT=)("
            + "|".join(str(p) for p in self.ports.values())
            + r")\b"
        )
        self._defaults = {str(self.ports[name]): str(port) for name, port in DEFAULT_PORTS.items()}

    def start(self, timeout: float = 120) -> None:
        """Start it and wait until the API answers and the worker polls."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "devtools.run_local"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not (BANNER_LAST in (text := self.output_text()) and WORKER_READY in text):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"make run exited ({self.process.returncode}):\n{self.output_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"make run was not ready within {timeout:.0f}s:\n{text[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Ctrl-C, as a person would: run_local stops its children in order."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # Its children first (each in a session of its own), while they are still its.
                subprocess.run(["pkill", "-KILL", "-P", str(self.process.pid)], check=False)
                self.process.kill()
                self.process.wait()
        if not self.keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    def output_text(self) -> str:
        """What `make run` printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def as_shown(self, text: str) -> list[str]:
        """`text` as a reader's `make run` (default ports, ./.data, /tmp) would print it."""
        text = text.replace("\r", "")
        text = text.replace(str(self.scratch), "/tmp").replace(
            str(self.data_dir), str(ROOT / ".data")
        )
        text = self._port_pattern.sub(lambda m: m[1] + self._defaults[m[2]], text)
        return [line.rstrip() for line in text.splitlines()]

    def run(self, command: str, timeout: float = 60) -> Outcome:
        """Run one command in bash with the stack's environment."""
        command = command.replace("/tmp/", f"{self.scratch}/")
        try:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as timed_out:
            printed = (timed_out.stdout or b"").decode("utf-8", errors="replace")
            return Outcome([*self.as_shown(printed), f"(still running after {timeout:.0f}s)"], -1)
        return Outcome(
            self.as_shown(done.stdout.decode("utf-8", errors="replace")), done.returncode
        )


def run_session(
    session: Session,
    *,
    wait_timeout: float = 60,
    keep: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> list[Outcome]:
    """Start a `make run` for the session, run its commands in order, stop it; one outcome per
    command of `session.commands`."""
    stack = Stack(session.env, keep=keep)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        stack.start()
        say(f"{session.name}: make run ready in {time.monotonic() - started:.1f}s ({stack.folder})")
        for block, command in session.commands:
            if block.stack_output:
                outcomes.append(Outcome(stack.as_shown(stack.output_text())))
                continue
            outcome = stack.run(command.text)
            if block.wait_until and command is block.commands[0]:
                pattern = re.compile(block.wait_until)
                deadline = time.monotonic() + wait_timeout
                while not pattern.search("\n".join(outcome.output)):
                    if time.monotonic() > deadline:
                        outcome.waited_in_vain = block.wait_until
                        break
                    time.sleep(POLL_SECONDS)
                    outcome = stack.run(command.text)
            elapsed = time.monotonic() - started
            say(f"{session.name}: {session.path}:{command.line} ran ({elapsed:.1f}s)")
            outcomes.append(outcome)
    finally:
        stack.stop()
    say(f"{session.name}: done in {time.monotonic() - started:.1f}s")
    return outcomes


def run_sessions(
    sessions: Sequence[Session],
    *,
    jobs: int = 1,
    wait_timeout: float = 60,
    keep: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, list[Outcome]]:
    """Run each session on a stack of its own, `jobs` at a time; outcomes by session name."""
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            session.name: pool.submit(
                run_session, session, wait_timeout=wait_timeout, keep=keep, say=say
            )
            for session in sessions
        }
        return {name: future.result() for name, future in futures.items()}


def session_files(root: Path = ROOT) -> list[Path]:
    """README.md and the docs/ pages that hold a session, in that order."""
    candidates = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [
        path
        for path in candidates
        if path.exists() and "<!-- session:" in path.read_text(encoding="utf-8")
    ]


def parse_files(paths: Sequence[Path]) -> list[Session]:
    """The sessions of several files, file by file.

    Raises:
        FormatError: as `parse`, or one session name in two files (a session lives in one).
    """
    sessions: list[Session] = []
    where: dict[str, Path] = {}
    for path in paths:
        for session in parse(path):
            if session.name in where:
                raise FormatError(
                    f"{path}: session {session.name} is in {where[session.name]} already"
                )
            where[session.name] = path
            sessions.append(session)
    return sessions


def select(paths: Path | Sequence[Path], names: Sequence[str]) -> list[Session]:
    """The sessions of `paths` named (all when none is)."""
    files = [paths] if isinstance(paths, Path) else list(paths)
    sessions = parse_files(files)
    if not names:
        return sessions
    known = {session.name: session for session in sessions}
    unknown = [name for name in names if name not in known]
    if unknown:
        shown = ", ".join(str(path) for path in files)
        raise FormatError(
            f"{shown}: no session {', '.join(unknown)} (they have {', '.join(known) or 'none'})"
        )
    return [known[name] for name in names]


def main(argv: list[str] | None = None) -> int:
    """Check, record or list the sessions of a Markdown file."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.readme_sessions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action",
        choices=["check", "record", "list"],
        help="check: compare, exit 1 on a difference; record: write the run's outputs of the "
        "sessions that differ; list: the sessions and their commands, nothing run",
    )
    parser.add_argument(
        "files",
        type=Path,
        nargs="*",
        help="Markdown files (default: README.md and the docs/*.md pages that hold a session)",
    )
    parser.add_argument(
        "--session", action="append", default=[], help="only this session (repeatable)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="sessions run at once, each on its own make run (default 2)",
    )
    parser.add_argument(
        "--wait-timeout", type=float, default=60, help="seconds a wait-until polls (default 60)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep each session's folder (make run's log, DATA_DIR)"
    )
    parser.add_argument("--quiet", action="store_true", help="say nothing but mismatches")
    args = parser.parse_args(argv)
    try:
        sessions = select(args.files or session_files(), args.session)
    except FormatError as error:
        print(error, file=sys.stderr)
        return 2
    if args.action == "list":
        for session in sessions:
            settings = " ".join(f"{name}={value}" for name, value in session.env.items())
            print(f"session {session.name}" + (f" ({settings})" if settings else ""))
            for block in session.blocks:
                kind = (
                    "not run"
                    if block.not_run
                    else "make run's output"
                    if block.stack_output
                    else ""
                )
                wait = f"wait until {block.wait_until!r}" if block.wait_until else ""
                for number, command in enumerate(block.commands):
                    notes = ", ".join(note for note in (kind, "" if number else wait) if note)
                    print(
                        f"  {session.path}:{command.line}: $ {command.text.splitlines()[0][:90]}"
                        + (f"   [{notes}]" if notes else "")
                    )
        return 0
    say = (lambda _: None) if args.quiet else (lambda message: print(message, flush=True))
    outcomes = run_sessions(
        sessions, jobs=args.jobs, wait_timeout=args.wait_timeout, keep=args.keep, say=say
    )
    if args.action == "record":
        for path in dict.fromkeys(session.path for session in sessions):
            in_file = [session for session in sessions if session.path == path]
            rewritten = record(path, in_file, outcomes)
            for session in in_file:
                state = (
                    "rewritten from this run"
                    if session.name in rewritten
                    else "as written, left alone"
                )
                print(f"{path}: session {session.name}: {state}")
        return 0
    failed = False
    for session in sessions:
        mismatches = compare(session, outcomes[session.name])
        for mismatch in mismatches:
            print(mismatch, end="\n\n")
        failed = failed or bool(mismatches)
        if not mismatches:
            count = len(session.commands)
            print(f"{session.path}: session {session.name}: {count} outputs as written")
    if failed:
        differing = dict.fromkeys(
            str(
                session.path.relative_to(ROOT)
                if session.path.is_relative_to(ROOT)
                else session.path
            )
            for session in sessions
            if compare(session, outcomes[session.name])
        )
        record_line = f"python -m devtools.readme_sessions record {' '.join(differing)}"
        print(f"some outputs differ; `{record_line}` writes the run's")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
