"""Agent-native rendering: `.venv/bin/pytest tests/roll/test_render.py` (`-m "not slow"`: the fast part).

Fast: hand-built and oracle-teacher conversations render to the template's text and ROME's tool-call format, a
foreign teacher's chunk is re-rendered (its ids and its JSON spacing are not ours), and the chunks pack. Slow
(docker + vLLM): for real trajectories synthesised by iflow in sandboxes, the rendered prompt equals the
`prompt_token_ids` that `rome serve` on vLLM returns for the same request, and what the oracle teacher recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iflow_cli.tools import SCHEMAS
from rock.contracts import Chunk, ChunkResponse, ToolCall, Trajectory
from roll.algo.packing import pack_trajectory
from roll.data.teacher import OracleTeacher, load_tokenizer
from roll.errors import RollError
from roll.sft import RenderError, render_chunk, render_trajectory
from roll.tasks.spec import Environment, TaskSpec
from rome.tokenizer.chat import parse_tool_calls

TOOLS = list(SCHEMAS.values())
SYSTEM = {"role": "system", "content": "You are iFlow, a coding agent working in a terminal."}
TASK = "Create notes/greeting.txt holding the line 'hello world'."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from rome.init import init_model

    return init_model(tmp_path_factory.mktemp("rome") / "tiny", "tiny")


@pytest.fixture(scope="module")
def tok(model_dir):
    return load_tokenizer(model_dir)


def call(name: str, arguments: str, cid: str) -> dict:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


def conversation(replies: list[dict], tid: str = "t0") -> list[Chunk]:
    """The chunks an agent records for these assistant replies (each followed by a tool result)."""
    history, chunks = [SYSTEM, {"role": "user", "content": TASK}], []
    for i, reply in enumerate(replies):
        calls = [ToolCall(**c) for c in reply.get("tool_calls") or []]
        response = ChunkResponse(text=reply.get("content") or "", tool_calls=calls)
        chunks.append(
            Chunk(
                trajectory_id=tid,
                sandbox_id="s",
                index=i,
                messages=list(history),
                tools=TOOLS,
                response=response,
                latency_s=0.1,
                created_at=0.0,
                prompt_token_ids=[5, 6, 7],
                response_token_ids=[9],
                response_logprobs=[-0.5],
            )  # fmt: skip  (a foreign tokenizer's ids)
        )
        history = history + [{"role": "assistant", **reply}]
        history += [
            {"role": "tool", "tool_call_id": c["id"], "content": f"ok {i}"} for c in reply.get("tool_calls") or []
        ]
    return chunks


def test_render_round_trip_template_text_rome_tool_calls_and_one_packed_sequence(tok):
    replies = [
        {"content": None, "tool_calls": [call("list_directory", json.dumps({"path": "."}), "c0")]},
        {"content": None, "tool_calls": [call("write_file", json.dumps({"path": "a.txt", "content": "hi\n"}), "c1")]},
        {"content": "Done: wrote a.txt.", "tool_calls": None},
    ]
    chunks = conversation(replies)
    for chunk, reply in zip(chunks, replies, strict=True):
        prompt, response = render_chunk(chunk, tok)
        want = tok.apply_chat_template(chunk.messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
        assert tok.decode(prompt) == want and prompt == tok.encode(want, add_special_tokens=False)
        text = tok.decode(response)
        assert text.endswith("<|im_end|>")
        content, calls = parse_tool_calls(text.removesuffix("<|im_end|>"))
        if reply["tool_calls"]:
            fn = reply["tool_calls"][0]["function"]
            assert (
                text
                == f'<tool_call>\n{{"name": "{fn["name"]}", "arguments": {fn["arguments"]}}}\n</tool_call><|im_end|>'
            )
            assert [c["function"] for c in calls] == [fn]
        else:
            assert content == "Done: wrote a.txt." and not calls
    rendered = render_trajectory(Trajectory(trajectory_id="t0", task_id="x", family="f", split="train", reward=1.0,
                                            status="resolved", chunks=chunks), tok)  # fmt: skip
    assert [c.response_logprobs == [0.0] * len(c.response_token_ids) for c in rendered] == [True] * 3
    (seq,) = pack_trajectory(rendered)  # each prompt extends the last prompt + reply: one sequence
    last = rendered[-1]
    assert seq.input_ids.tolist() == last.prompt_token_ids + last.response_token_ids
    assert int(seq.loss_mask.sum()) == sum(len(c.response_token_ids) for c in rendered)


def test_a_foreign_teachers_chunk_is_rerendered_in_romes_format_and_its_history_packs(tok):
    """A URL teacher writes compact JSON and text before its call; its ids are another tokenizer's."""
    replies = [
        {"content": "Let me look first.", "tool_calls": [call("list_directory", '{"path":"."}', "c0")]},
        {"content": None, "tool_calls": [call("read_file", '{ "path" : "a.txt" }', "c1")]},
        {"content": "All done.", "tool_calls": None},
    ]
    chunks = conversation(replies)
    first_prompt, first = render_chunk(chunks[0], tok)
    assert first_prompt != chunks[0].prompt_token_ids
    assert tok.decode(first) == (
        'Let me look first.\n<tool_call>\n{"name": "list_directory", "arguments": {"path": "."}}\n</tool_call><|im_end|>'
    )
    second_prompt, _ = render_chunk(chunks[1], tok)
    assert '"arguments": {"path": "."}}' in tok.decode(second_prompt)  # history in our spacing too
    assert second_prompt[: len(first_prompt) + len(first)] == first_prompt + first
    traj = Trajectory(trajectory_id="t0", task_id="x", family="f", split="train", reward=1.0, status="resolved",
                      chunks=chunks)  # fmt: skip
    assert len(pack_trajectory(render_trajectory(traj, tok))) == 1


def test_a_malformed_call_is_rendered_as_the_model_wrote_it(tok):
    """A call that did not parse comes back as content: the model's own text, which is what the model emitted."""
    raw = '<tool_call>\n{"name": "write_file", "arguments": {"path": "a.txt"}\n</tool_call>'
    (chunk,) = conversation([{"content": raw, "tool_calls": None}])
    _, response = render_chunk(chunk, tok)
    assert tok.decode(response) == raw + "<|im_end|>"


def test_aborted_calls_are_left_out_and_bad_chunks_are_named(tok):
    chunks = conversation([{"content": "x", "tool_calls": None}, {"content": "y", "tool_calls": None}])
    chunks[0] = chunks[0].model_copy(update={"error": "upstream went away", "finish_reason": "abort"})
    traj = Trajectory(trajectory_id="t0", task_id="x", family="f", split="train", reward=0.0, status="model_error",
                      chunks=chunks)  # fmt: skip
    assert [c.index for c in render_trajectory(traj, tok)] == [1]
    empty = chunks[1].model_copy(update={"messages": None})
    with pytest.raises(RenderError, match="trajectory t0 chunk 1: no request messages"):
        render_chunk(empty, tok)
    with pytest.raises(RollError, match="no tokenizer_config.json"):
        render_chunk(chunks[1], "/nonexistent/model")


def test_rendered_ids_equal_what_the_oracle_teacher_records(tmp_path, tok):
    """The teacher's replies as the gateway records them (request, reply, its ids): rendering gives the same ids."""
    task = TaskSpec(
        id="greet-0", family="greet", instruction=TASK, workdir=str(tmp_path),
        environment=Environment(image="rock/base:bookworm", setup="echo seed > seed.txt"),
        tests={"run-tests.sh": "grep -qx 'hello world' notes/greeting.txt"},
        solution="mkdir -p notes && echo 'hello world' > notes/greeting.txt",
        solution_steps=["mkdir -p notes", "echo 'hello world' > notes/greeting.txt"],
    )  # fmt: skip
    teacher = OracleTeacher([task], tok, mistake_rate=1.0, mistakes=["bad_json"], seed=3)
    history = [SYSTEM, {"role": "user", "content": TASK}]
    for i in range(5):
        reply = teacher.respond({"messages": history, "tools": TOOLS, "return_token_ids": True})
        message = reply["choices"][0]["message"]
        chunk = Chunk(
            trajectory_id="t", sandbox_id="s", index=i, messages=list(history), tools=TOOLS, latency_s=0.0,
            created_at=0.0, response=ChunkResponse(text=message["content"] or "",
                                                   tool_calls=[ToolCall(**c) for c in message["tool_calls"] or []]),
        )  # fmt: skip
        assert render_chunk(chunk, tok) == (reply["prompt_token_ids"], reply["choices"][0]["token_ids"])
        history = history + [message]
        for c in message["tool_calls"] or [{"id": None}]:
            history.append({"role": "tool", "tool_call_id": c["id"], "content": "Exit code: 0"})


@pytest.mark.slow
@pytest.mark.docker
def test_real_trajectories_render_to_the_prompt_ids_vllm_serves(tmp_path, model_dir, tok):
    """Synthesise with the oracle (real iflow in sandboxes, chunks recorded by the gateway), then send every
    recorded request to `rome serve` on vLLM: its prompt_token_ids == ours == the teacher's recording."""
    import httpx

    from roll.data.synth import synthesize
    from roll.sft import load_trajectories
    from roll.tasks.loader import load_tasks
    from rome.serving.server import start_server

    tasks, errors = load_tasks("ale", families=["read_then_write", "sed_replace"], split="train")
    assert not errors
    report = synthesize(tasks[:2], teacher="oracle", out_dir=tmp_path / "synth", mistake_rate=1.0,
                        tokenizer=model_dir, progress=False, log=lambda s: None)  # fmt: skip
    trajs = load_trajectories(tmp_path / "synth", verified=True)
    assert report.verified == len(trajs) == 2
    chunks = [c for t in trajs for c in t.chunks]
    assert len(chunks) >= 8 and any(not r.ok for t in trajs for r in t.tool_results)
    with start_server(model_dir, engine="vllm") as server:
        for c in chunks:
            body = {"messages": c.messages, "tools": c.tools, "max_tokens": 1, "return_token_ids": True}
            served = httpx.post(server.url + "/chat/completions", json=body, timeout=120).json()["prompt_token_ids"]
            prompt, response = render_chunk(c, tok)
            assert prompt == served == c.prompt_token_ids, (c.trajectory_id, c.index)
            assert response == c.response_token_ids
