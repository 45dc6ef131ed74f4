"""Fixtures for `pytest tests/iflow`: an isolated home and cwd, and a runner for `iflow -p` in-process."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from iflow_cli.cli import main
from iflow_cli.testing.scripted_server import ScriptedServer


@dataclass
class Run:
    code: int
    out: str
    err: str
    server: ScriptedServer
    info: dict
    trajectory: list[dict]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty project dir as cwd, a private HOME, and no OPENAI_/IFLOW_ settings leaking in."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(__import__("os").environ):
        if name.startswith(("IFLOW_", "OPENAI_", "ROCK_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def iflow(workdir, capsys):
    """iflow(script, *flags) runs `iflow -p` against a scripted server and returns a Run."""

    def run(script: list, *flags: str, prompt: str = "do the task", **server_kw) -> Run:
        info_path, traj_path = workdir.parent / "info.json", workdir.parent / "traj.jsonl"
        with ScriptedServer(script, **server_kw) as server:
            argv = ["-p", prompt, "--base-url", server.url, "-o", str(info_path), "--trajectory", str(traj_path)]
            code = main([*argv, "--set", "retryDelay=0.05", *flags])
        out, err = capsys.readouterr()
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        traj = [json.loads(line) for line in traj_path.read_text().splitlines()] if traj_path.exists() else []
        return Run(code, out, err, server, info, traj)

    return run
