"""pytest tests/iflow/test_iflow_config.py — settings layers, validation, and bad-input messages at startup."""

from __future__ import annotations

import json

import pytest
from iflow_helpers import free_port

from iflow_cli.cli import main
from iflow_cli.config import ConfigError, load_settings


def write(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_layers_later_wins(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "proj"
    write(
        home / ".iflow/settings.json",
        {"baseUrl": "http://home/v1", "maxSessionTurns": 7, "shellTimeout": 5, "tokensLimit": 9000},
    )
    write(cwd / ".iflow/settings.json", {"maxSessionTurns": 8, "shellTimeout": 6})
    env = {"IFLOW_shellTimeout": "9", "IFLOW_MAX_TOKENS": "123", "OPENAI_API_KEY": "k-env", "IFLOW_UNRELATED": "x"}
    s = load_settings({"tokensLimit": 10000, "modelName": None}, env=env, home=home, cwd=cwd)
    assert (s.base_url, s.max_session_turns, s.shell_timeout, s.max_tokens, s.tokens_limit) == (
        "http://home/v1",
        8,
        9.0,
        123,
        10000,
    )
    assert s.api_key == "k-env" and s.compression_token_threshold == 0.8 and s.model_name == ""


def test_openai_fallbacks_lose_to_settings(tmp_path):
    env = {"OPENAI_BASE_URL": "http://env/v1", "IFLOW_BASE_URL": "http://iflow/v1"}
    assert load_settings({}, env=env, home=tmp_path, cwd=tmp_path).base_url == "http://iflow/v1"
    assert (
        load_settings({}, env={"OPENAI_BASE_URL": "http://env/v1"}, home=tmp_path, cwd=tmp_path).base_url
        == "http://env/v1"
    )


@pytest.mark.parametrize(
    "data, words",
    [
        ({"tokenLimit": 5}, ["unknown key 'tokenLimit'"]),
        ({"maxSessionTurns": "ten"}, ["key 'maxSessionTurns' must be int"]),
        ({"compressionTokenThreshold": 1.5}, ["key 'compressionTokenThreshold' must be in (0, 1]"]),
        ({"approvalMode": "sometimes"}, ["key 'approvalMode' must be one of"]),
        ({"excludeTools": "glob"}, ["key 'excludeTools'"]),
    ],
)
def test_bad_values_name_the_key_and_file(tmp_path, data, words):
    write(tmp_path / ".iflow/settings.json", data)
    with pytest.raises(ConfigError) as e:
        load_settings({}, env={}, home=tmp_path / "nohome", cwd=tmp_path)
    assert all(w in str(e.value) for w in words) and "settings.json" in str(e.value)


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="IFLOW_MAX_TOKENS.*maxTokens"):
        load_settings({}, env={"IFLOW_MAX_TOKENS": "lots"}, home=tmp_path, cwd=tmp_path)


def test_invalid_settings_json_names_file_and_line(workdir, capsys):
    write(workdir / ".iflow/settings.json", '{\n  "baseUrl": "http://x/v1",\n  "maxSessionTurns": 3,,\n}\n')
    assert main(["-p", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ".iflow/settings.json line 3" in err


def test_unreachable_base_url_is_one_line(workdir, capsys):
    assert main(["-p", "hi", "--base-url", f"http://127.0.0.1:{free_port()}/v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreachable" in err and "refused" in err.lower()


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "ftp://host/v1", "http:///v1"])
def test_malformed_base_url_is_one_line(workdir, capsys, url):
    assert main(["-p", "hi", "--base-url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "malformed baseUrl" in err and url in err


def test_missing_base_url_says_how_to_set_it(workdir, capsys):
    assert main(["-p", "hi", "-o", "info.json"]) == 2
    assert "OPENAI_BASE_URL" in capsys.readouterr().err
    assert json.loads((workdir / "info.json").read_text())["termination_reason"] == "model_error"


def test_help_lists_settings(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--yolo" in out and "compressionTokenThreshold" in out and "OPENAI_BASE_URL" in out


@pytest.mark.parametrize(
    "spec, words", [("no-hash", "must look like"), ("http://127.0.0.1:9#sb1", "cannot reach ROCK")]
)
def test_bad_sandbox_is_one_line(workdir, capsys, spec, words):
    spec = spec.replace(":9#", f":{free_port()}#")
    assert main(["-p", "hi", "--base-url", "http://127.0.0.1:1/v1", "--sandbox", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_console_script_help():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "iflow"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0 and "usage: iflow" in proc.stdout


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--cwd", "/nonexistent/dir"], "working directory /nonexistent/dir does not exist"),
        (["--set", "modelProvider=scripted", "--set", "scriptFile=missing.json"], "scriptFile missing.json"),
        (["--max-turns", "0"], "key 'maxSessionTurns' must be > 0"),
    ],
)
def test_bad_setup_is_one_line(workdir, capsys, flags, words):
    assert main(["-p", "hi", "--base-url", "http://127.0.0.1:1/v1", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err
