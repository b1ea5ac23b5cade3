"""Every code block of README.md and deploy/README.md, as written, against one `broker dev`.

Blocks are found generically (any fenced block), so a README change that breaks a step breaks the build:

* ``bash`` / ``sh`` blocks run in bash with ``set -eu`` (a pipeline counts by its last command, as in a terminal), one after another as in one terminal (each
  starts with the environment and directory the previous one left), from a fresh folder that has the
  repository's ``scopes/``, ``deploy/`` and ``tests/`` and the venv's ``bin`` first on PATH (as after
  ``source .venv/bin/activate``), while ``broker dev`` runs "in the first terminal";
* ``python`` blocks run with the venv's Python in that environment;
* ``json`` / ``yaml`` blocks must parse;
* a block whose first line is ``# not run here: <why>`` is skipped, and must say why.

The one liberty taken: the dev broker listens on free ports, so ``127.0.0.1:8080`` (the API) and
``127.0.0.1:4566`` (the fake AWS) in a block are read as those ports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "deploy/README.md")
FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"^#\s*not run here:\s*(?P<why>\S.{8,})$")
SHELLS = {"bash", "sh", "shell", "console"}
DATA = {"json": json.loads, "yaml": yaml.safe_load, "yml": yaml.safe_load}
LINKED = ("scopes", "deploy", "tests", "pyproject.toml")
BLOCK_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line} ({self.lang or 'no language'})"

    @property
    def not_run_because(self) -> str | None:
        first = next((line.strip() for line in self.body.splitlines() if line.strip()), "")
        match = NOT_RUN.fullmatch(first)
        return match["why"] if match else None


def blocks_of(doc: str) -> list[Block]:
    text = (REPO / doc).read_text()
    return [Block(doc, text[:m.start()].count("\n") + 1, m["lang"].lower(), m["body"]) for m in FENCE.finditer(text)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Terminal:
    """The reader's second terminal: its folder, environment and the ports `broker dev` got."""

    folder: Path
    env: dict[str, str]
    api_port: int
    aws_port: int

    def adapt(self, body: str) -> str:
        return body.replace("127.0.0.1:8080", f"127.0.0.1:{self.api_port}").replace(
            "127.0.0.1:4566", f"127.0.0.1:{self.aws_port}")

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        body = self.adapt(block.body)
        if block.lang == "python":
            return subprocess.run([sys.executable, "-c", body], cwd=self.env.get("PWD", self.folder), env=self.env,
                                  capture_output=True, text=True, timeout=BLOCK_TIMEOUT, check=False)
        state = self.folder / ".terminal-state"
        script = (f"set -eu\ncd {shlex.quote(self.env.get('PWD', str(self.folder)))}\n{body}\n"
                  f"env -0 > {shlex.quote(str(state))}\n")
        done = subprocess.run(["bash", "-c", script], env=self.env, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT, check=False)
        if done.returncode == 0:
            # The next block starts where this one left the terminal (its exports, its directory).
            self.env = dict(item.split("=", 1) for item in state.read_text().split("\0") if "=" in item)
        return done


@pytest.fixture(scope="module")
def terminal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        (folder / name).symlink_to(REPO / name)
    # The quick start's .venv, as `source .venv/bin/activate` finds it.
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)
    home = folder / "home"
    home.mkdir()
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AWS_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(
        Path(venv_bin).parent), PWD=str(folder), PYTHONUNBUFFERED="1")
    api_port, aws_port = _free_port(), _free_port()
    # The first terminal: `broker dev` as the quick start runs it, from the repository's folder.
    dev = subprocess.Popen([str(Path(venv_bin) / "broker"), "dev", "--port", str(api_port), "--aws-port",
                            str(aws_port)], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if "self-check: with those credentials" in line or "self-check FAILED" in line:
                break
        assert any("self-check: with those credentials" in line for line in lines), "\n".join(lines)
        yield Terminal(folder=folder, env=env, api_port=api_port, aws_port=aws_port)
    finally:
        dev.terminate()
        dev.wait(15)


def test_the_documents_have_blocks_and_every_skipped_block_says_why():
    for doc in DOCS:
        found = blocks_of(doc)
        assert found, doc
        for block in found:
            first = next((line.strip() for line in block.body.splitlines() if line.strip()), "")
            if first.lower().startswith("# not run"):
                assert block.not_run_because, f"{block.where}: write '# not run here: <why>' (a reason)"


@pytest.mark.parametrize("doc", DOCS)
@pytest.mark.slow
def test_every_block_runs_as_written(terminal, doc):
    ran = 0
    for block in blocks_of(doc):
        if block.not_run_because:
            continue
        if block.lang in DATA:
            try:
                DATA[block.lang](block.body)
            except (ValueError, yaml.YAMLError) as exc:
                pytest.fail(f"{block.where} does not parse: {exc}")
            continue
        if block.lang not in SHELLS | {"python"}:
            continue
        done = terminal.run(block)
        assert done.returncode == 0, (f"{block.where} failed with exit {done.returncode}:\n{block.body}\n"
                                      f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
        ran += 1
    assert ran, f"{doc}: no block ran"
