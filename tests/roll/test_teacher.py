"""The oracle teacher over HTTP, driving the real iflow agent locally: `.venv/bin/pytest tests/roll/test_teacher.py`.

A clean plan and a plan with each kind of mistake both end with the task done; the token ids are ROME's
chat template rendering of the request and the reply in ROME's own tool-call format.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from iflow_cli.models.openai_api import OpenAIModel
from iflow_cli.tools import SCHEMAS
from rock.gateway.chunks import ResponseAggregate
from roll.data.teacher import MISTAKES, OracleTeacher, TeacherError, act_steps, load_tokenizer, make_plan
from roll.tasks.spec import Environment, TaskSpec

ROOT = Path(__file__).resolve().parents[2]
TOOLS = list(SCHEMAS.values())


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from rome.init import init_model

    return load_tokenizer(init_model(tmp_path_factory.mktemp("rome") / "tiny", "tiny"))


def make_task(workdir: Path, **kw) -> TaskSpec:
    """Write `greeting.txt` under notes/ after reading seed.txt (which setup makes): three act steps."""
    fields = dict(
        id="greet-0",
        family="greet",
        instruction="Read seed.txt, then create notes/greeting.txt holding the line 'hello world'.",
        environment=Environment(image="rock/base:bookworm", setup="echo seed > seed.txt"),
        tests={"run-tests.sh": "grep -qx 'hello world' notes/greeting.txt"},
        solution="mkdir -p notes && echo 'hello world' > notes/greeting.txt",
        solution_steps=["mkdir -p notes", "echo 'hello world' > notes/greeting.txt", "touch notes/.done"],
        workdir=str(workdir),
    )
    return TaskSpec(**(fields | kw))


def run_iflow(task: TaskSpec, url: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The real agent in batch mode, in the task's workdir, after the task's setup."""
    wd = Path(task.workdir)
    subprocess.run(["bash", "-c", task.environment.setup], cwd=wd, check=True)
    argv = [sys.executable, "-m", "iflow_cli", "-p", task.instruction, "--base-url", url, "--yolo", "-o", "info.json"]
    proc = subprocess.run(argv, cwd=wd, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(ROOT)})
    info = json.loads((wd / "info.json").read_text())
    return proc, info


def task_tests_pass(task: TaskSpec) -> bool:
    return subprocess.run(["bash", "-c", task.tests["run-tests.sh"]], cwd=task.workdir).returncode == 0


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(
        url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_clean_plan_looks_acts_checks_and_finishes(tmp_path, tokenizer):
    task = make_task(tmp_path)
    with OracleTeacher([task], tokenizer, mistake_rate=0.0).serve() as server:
        proc, info = run_iflow(task, server.url)
    assert proc.returncode == 0, proc.stderr
    assert info["termination_reason"] == "finished" and task_tests_pass(task)
    results = info["tool_results"]
    assert all(r["ok"] and r["parsed"] for r in results), results
    tools = [r["tool"] for r in results]
    # look (the directory, then the file the instruction names), act (3 steps: a literal write becomes
    # write_file), check; one model call per tool call plus the final answer
    assert tools[0] in ("list_directory", "run_shell_command", "glob") and tools[1] == "read_file"
    assert tools[2:5] == ["run_shell_command", "write_file", "run_shell_command"] and len(tools) == 6
    assert info["rounds"] == 7
    assert [r["call_id"].rsplit("_", 1)[1] for r in results] == [str(i) for i in range(6)]


@pytest.mark.parametrize("kind", MISTAKES)
def test_a_mistake_is_followed_by_its_fix_and_the_task_is_done(tmp_path, tokenizer, kind):
    task = make_task(tmp_path)
    with OracleTeacher([task], tokenizer, mistake_rate=1.0, mistakes=[kind]).serve() as server:
        proc, info = run_iflow(task, server.url)
    assert proc.returncode == 0, proc.stderr
    assert task_tests_pass(task) and (tmp_path / "notes/.done").is_file()
    results = info["tool_results"]
    failed = [i for i, r in enumerate(results) if not r["ok"]]
    assert len(failed) == 1, results
    bad, fix = results[failed[0]], results[failed[0] + 1]
    assert fix["ok"] and bad["error"]
    if kind == "typo":
        assert bad["exit_code"] == 127 and "command not found" in bad["error"] and fix["tool"] == "run_shell_command"
    elif kind == "wrong_path":
        assert bad["parsed"] and bad["tool"] in ("read_file", "list_directory") and fix["tool"] == bad["tool"]
    elif kind == "missing_arg":
        assert not bad["parsed"] and "missing required argument" in bad["error"] and fix["tool"] == bad["tool"]
    else:  # the reply held a <tool_call> block that is not JSON: parsed from text, and refused
        assert not bad["parsed"] and "not valid JSON" in bad["error"]


def test_attempts_draw_different_plans_and_a_plan_continues_from_its_ids(tmp_path, tokenizer):
    task = make_task(tmp_path)
    teacher = OracleTeacher([task], tokenizer, mistake_rate=0.0)
    first = [{"role": "system", "content": "sys"}, {"role": "user", "content": task.instruction}]
    ids = [teacher.respond({"messages": first})["choices"][0]["message"]["tool_calls"][0]["id"] for _ in range(8)]
    assert len(set(ids)) == 8 and all(i.endswith("_0") for i in ids)
    assert len({make_plan(task, i.split("_")[2], 0.5).mistake for i in ids}) >= 3  # clean, and mistakes of kinds
    # A later call continues the plan of the ids in its history, whatever was drawn since.
    seed = ids[3].split("_")[2]
    plan = make_plan(task, seed, 0.0)
    history = list(first)
    for step in range(3):
        reply = teacher.respond({"messages": history})["choices"][0]["message"]
        history += [reply, {"role": "tool", "tool_call_id": "x", "content": "ok"}]
        if step == 0:  # swap in attempt 3's first call: the rest must follow attempt 3's plan
            history[-2] = {**reply, "tool_calls": [{**reply["tool_calls"][0], "id": ids[3]}]}
        else:
            call = reply["tool_calls"][0]
            assert call["id"] == f"call_oracle_{seed}_{step}"
            assert (call["function"]["name"], call["function"]["arguments"]) == (
                plan.steps[step].tool,
                plan.steps[step].arguments,
            )
    assert teacher.attempts[task.id] == 9  # the 8 and the fresh draw of the loop's first call


def test_token_ids_are_the_rome_template_rendering(tmp_path, tokenizer):
    task = make_task(tmp_path)
    messages = [{"role": "system", "content": "You are iFlow."}, {"role": "user", "content": task.instruction}]
    with OracleTeacher([task], tokenizer, mistake_rate=0.0).serve() as server:
        body = {"messages": messages, "tools": TOOLS, "return_token_ids": True, "logprobs": True}
        one = post(server.url, body)
        ids = tokenizer.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if not isinstance(ids, list) else ids
        assert one["prompt_token_ids"] == list(ids)
        choice = one["choices"][0]
        out = choice["token_ids"]
        text = tokenizer.decode(out)
        call = choice["message"]["tool_calls"][0]["function"]
        assert (
            text
            == f'<tool_call>\n{{"name": "{call["name"]}", "arguments": {call["arguments"]}}}\n</tool_call><|im_end|>'
        )
        assert [e["logprob"] for e in choice["logprobs"]["content"]] == [0.0] * len(out)
        assert one["usage"]["prompt_tokens"] == len(ids) and one["usage"]["completion_tokens"] == len(out)
        # The next call's prompt extends this one's prompt and reply: the chunks of an attempt pack.
        messages2 = messages + [choice["message"], {"role": "tool", "tool_call_id": "x", "content": "a\nb"}]
        two = post(server.url, {**body, "messages": messages2})
        assert two["prompt_token_ids"][: len(ids) + len(out)] == list(ids) + out
        # Without the extras, none are sent.
        plain = post(server.url, {"messages": messages, "tools": TOOLS})
        assert "prompt_token_ids" not in plain and plain["choices"][0]["logprobs"] is None


def test_stream_gives_the_same_call_and_ids_as_the_whole_reply(tmp_path, tokenizer):
    task = make_task(tmp_path)
    messages = [{"role": "user", "content": task.instruction}]
    with OracleTeacher([task], tokenizer, mistake_rate=0.0, seed=7).serve() as server:
        whole = post(server.url, {"messages": messages, "tools": TOOLS, "return_token_ids": True, "logprobs": True})
    with OracleTeacher([task], tokenizer, mistake_rate=0.0, seed=7).serve() as server:
        body = {"messages": messages, "tools": TOOLS, "stream": True, "return_token_ids": True, "logprobs": True}
        req = urllib.request.Request(server.url + "/chat/completions", json.dumps(body).encode())
        agg = ResponseAggregate()  # what the gateway records from a stream
        with urllib.request.urlopen(req, timeout=10) as r:
            for line in r:
                if line.startswith(b"data: {"):
                    agg.add(json.loads(line[6:]))
        streamed = OpenAIModel(server.url, stream=True, log=lambda s: None).complete(messages, TOOLS)
    assert agg.prompt_token_ids == whole["prompt_token_ids"] and agg.token_ids == whole["choices"][0]["token_ids"]
    assert agg.logprobs == [0.0] * len(agg.token_ids) and agg.finish_reason == "tool_calls"
    want = whole["choices"][0]["message"]["tool_calls"][0]
    assert agg.response()["tool_calls"][0]["function"] == want["function"]
    assert streamed.tool_calls[0]["name"] == want["function"]["name"]


def test_literal_writes_become_write_file_where_that_changes_nothing_and_typos_only_stop_a_step(tmp_path):
    heredoc = "cat > /app/lib/util.py <<'ALE_EOF'\ndef f():\n    return '$HOME'\nALE_EOF"
    task = make_task(tmp_path, solution_steps=["mkdir -p /app/lib", heredoc, "cd /app && make; echo done"])
    for seed in ("a" * 12, "b" * 12, "c" * 12, "d" * 12):
        plan = make_plan(task, seed, 1.0, ("typo",))
        typos = [json.loads(s.arguments)["command"] for s in plan.steps if s.mistake]
        assert typos == ["mdkir -p /app/lib"]  # not the last step: after `;` the rest would run despite a typo
        writes = [json.loads(s.arguments) for s in plan.steps if s.tool == "write_file"]
        assert writes == [{"path": "/app/lib/util.py", "content": "def f():\n    return '$HOME'\n"}]
    echoes = [
        "echo plum > a.txt",
        "echo 'a  b' > b",
        "echo $HOME > c",
        "echo x >> d",
        "echo -n x > e",
        "echo x > f; ls",
    ]
    steps = [json.loads(s.arguments) for s in act_steps(make_task(tmp_path, solution_steps=echoes))]
    assert steps[:2] == [{"path": "a.txt", "content": "plum\n"}, {"path": "b", "content": "a  b\n"}]
    assert [s["command"] for s in steps[2:]] == echoes[2:]  # anything not plainly literal stays a shell command
    # write_file would make a missing directory: a write into one nothing made stays shell (and fails there)
    into = ["echo x > /new/dir/a.txt", "mkdir -p /new/dir", "echo x > /new/dir/a.txt", "echo y > notes/b.txt"]
    tools = [s.tool for s in act_steps(make_task(tmp_path, solution_steps=into))]
    assert tools == ["run_shell_command", "run_shell_command", "write_file", "run_shell_command"]


def test_bad_input_is_refused_with_one_line(tmp_path, tokenizer):
    task = make_task(tmp_path)
    with pytest.raises(TeacherError, match="mistake rate"):
        OracleTeacher([task], tokenizer, mistake_rate=1.5)
    with pytest.raises(TeacherError, match="unknown mistake"):
        OracleTeacher([task], tokenizer, mistakes=["sneeze"])
    with pytest.raises(TeacherError, match="greet-0 and twin have the same instruction"):
        OracleTeacher([task, make_task(tmp_path, id="twin", solution_steps=["true"])])
    with pytest.raises(TeacherError, match="no tokenizer_config"):
        OracleTeacher([task], tmp_path)
    with OracleTeacher([task], tokenizer).serve() as server:
        with pytest.raises(urllib.error.HTTPError) as e:
            post(server.url, {"messages": [{"role": "user", "content": "an unknown task"}]})
        assert e.value.code == 400 and "no task has the instruction" in json.loads(e.value.read())["error"]["message"]


@pytest.mark.slow
def test_prompt_ids_equal_rome_serve_on_the_same_request_and_replies_parse_as_rome_output(tmp_path, tokenizer):
    """The same multi-turn request to `rome serve` (HF engine, ROME-tiny) and to the teacher: the same prompt
    ids; and the teacher's reply, decoded, is read back by rome's own tool-call parser as the same call."""
    from rome.serving.server import start_server
    from rome.tokenizer.chat import parse_tool_calls

    task = make_task(tmp_path)
    history = [{"role": "system", "content": "You are iFlow."}, {"role": "user", "content": task.instruction}]
    teacher = OracleTeacher([task], tokenizer, mistake_rate=0.0)
    for _ in range(3):  # three turns of the plan, with tool results in between
        reply = teacher.respond({"messages": history, "tools": TOOLS, "return_token_ids": True})
        message = reply["choices"][0]["message"]
        content, calls = parse_tool_calls(tokenizer.decode(reply["choices"][0]["token_ids"], skip_special_tokens=True))
        assert content is None and [c["function"] for c in calls] == [c["function"] for c in message["tool_calls"]]
        call_id = message["tool_calls"][0]["id"]
        history += [message, {"role": "tool", "tool_call_id": call_id, "content": "Exit code: 0\nStdout:\nok"}]
    request = {"messages": history, "tools": TOOLS, "return_token_ids": True, "max_tokens": 1}
    ours = teacher.respond(request)["prompt_token_ids"]
    model_dir = Path(tokenizer.name_or_path)
    with start_server(model_dir, engine="hf") as server:
        theirs = post(server.url, request)["prompt_token_ids"]
    assert ours == theirs and len(ours) > 900
