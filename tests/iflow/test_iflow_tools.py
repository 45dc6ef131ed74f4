"""pytest tests/iflow/test_iflow_tools.py — the tools on the local executor, called directly."""

from __future__ import annotations

import pytest

from iflow_cli.executors.local import LocalExecutor
from iflow_cli.tools import Toolbox, ToolError, truncate


@pytest.fixture
def box(tmp_path) -> Toolbox:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\ny = 2\nx = 3\n")
    (tmp_path / "src" / "b.txt").write_text("nothing here\n")
    (tmp_path / "README.md").write_text("# demo\n")
    return Toolbox(LocalExecutor(str(tmp_path)), approval_mode="yolo", output_limit=400)


def test_truncate_keeps_head_and_tail():
    text = "H" * 500 + "M" * 1000 + "T" * 500
    out = truncate(text, 400)
    assert out.startswith("H" * 200) and out.endswith("T" * 200) and "[... 1600 characters elided ...]" in out


def test_shell_output_truncated_with_elided_count(box):
    res = box.call("run_shell_command", {"command": "seq 1 2000"})
    assert res.ok and res.exit_code == 0 and "characters elided" in res.output and res.output.rstrip().endswith("2000")


def test_shell_failure_reports_exit_code_and_stderr(box):
    res = box.call("run_shell_command", {"command": "echo oops >&2; exit 3"})
    assert not res.ok and res.exit_code == 3 and "Exit code: 3" in res.output and "Stderr:\noops" in res.output


def test_replace_refuses_missing_and_ambiguous(box, tmp_path):
    assert (
        "old_string not found"
        in box.call("replace", {"path": "src/a.py", "old_string": "z = 9", "new_string": ""}).output
    )
    res = box.call("replace", {"path": "src/a.py", "old_string": "x = ", "new_string": "w = "})
    assert not res.ok and "occurs 2 times" in res.output
    assert (tmp_path / "src/a.py").read_text() == "x = 1\ny = 2\nx = 3\n"
    assert box.call("replace", {"path": "src/a.py", "old_string": "x = 3", "new_string": "x = 4"}).ok
    assert (tmp_path / "src/a.py").read_text().endswith("x = 4\n")


def test_read_file_window_and_missing(box):
    out = box.call("read_file", {"path": "src/a.py", "offset": 1, "limit": 1}).output
    assert out == "[lines 2-2 of 3; use offset/limit for more]\ny = 2\n"
    res = box.call("read_file", {"path": "nope.txt"})
    assert not res.ok and "No such file" in res.output


def test_list_glob_search(box, tmp_path):
    assert box.call("list_directory", {"path": "."}).output.splitlines()[1:] == ["src/", "README.md"]
    assert box.call("glob", {"pattern": "**/*.py"}).output == str(tmp_path / "src/a.py")
    hits = box.call("search_file_content", {"pattern": r"^x = \d", "include": "*.py"}).output.splitlines()
    assert hits == [f"{tmp_path}/src/a.py:1: x = 1", f"{tmp_path}/src/a.py:3: x = 3"]
    assert "invalid regular expression" in box.call("search_file_content", {"pattern": "("}).output


def test_argument_errors_raise_for_the_loop(box):
    with pytest.raises(ToolError, match="missing required argument 'command'"):
        box.call("run_shell_command", {})
    with pytest.raises(ToolError, match="'limit' must be a integer"):
        box.call("read_file", {"path": "x", "limit": "ten"})


def test_allowed_and_excluded_tools(tmp_path):
    box = Toolbox(
        LocalExecutor(str(tmp_path)), "yolo", allowed=["read_file", "run_shell_command"], excluded=["run_shell_command"]
    )
    assert [s["function"]["name"] for s in box.schemas()] == ["read_file"]
    res = box.call("run_shell_command", {"command": "true"})
    assert not res.ok and "disabled by configuration" in res.output


def test_auto_edit_allows_edits_not_shell_in_batch(tmp_path):
    box = Toolbox(LocalExecutor(str(tmp_path)), "autoEdit")
    assert box.call("write_file", {"path": "f", "content": "1"}).ok
    assert "refused" in box.call("run_shell_command", {"command": "true"}).output


def test_shell_directory_argument(box, tmp_path):
    assert box.call("run_shell_command", {"command": "ls", "directory": "src"}).output.endswith("a.py\nb.txt\n")
    res = box.call("run_shell_command", {"command": "true", "directory": "missing"})
    assert not res.ok and "missing" in res.output
