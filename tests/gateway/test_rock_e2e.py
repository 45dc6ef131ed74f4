"""End to end through `rock serve`: sandboxes created with "network": "model", an agent inside
calling $OPENAI_BASE_URL with urllib, the chunks read back over REST:
`.venv/bin/pytest tests/gateway/test_rock_e2e.py -m docker`.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from gwtools import CLIENT, MESSAGES, MisbehavingUpstream, check_chunk, sse_reply

from iflow_cli.testing.scripted_server import ScriptedServer, render_prompt
from rock import errors
from rock.launch import RockProcess

pytestmark = [pytest.mark.docker, pytest.mark.slow]
N = 32


def call_inside(sandbox, body: dict, key: str | None = None) -> dict:
    res = sandbox.exec(["python3", "-c", CLIENT, json.dumps(body)] + ([key] if key else []), timeout=60)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def answer_text(result: dict) -> str:
    """The assistant text the agent received, from a whole reply or reassembled from SSE events."""
    body = "".join(p for _, p in result["pieces"])
    if not body.startswith("data: "):
        return json.loads(body)["choices"][0]["message"]["content"]
    events = [json.loads(b[6:]) for b in body.split("\n\n") if b.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events)


@pytest.fixture(scope="module")
def upstream():
    with ScriptedServer(["the answer"] + [f"answer {i}" for i in range(N)]) as up:
        yield up


@pytest.fixture(scope="module")
def rock(upstream, tmp_path_factory):
    with RockProcess(model_upstream=upstream.url, state_dir=tmp_path_factory.mktemp("rock")) as proc:
        with proc.client() as client:
            yield client


def test_agent_inside_calls_the_model_and_the_chunk_is_exact(rock, base_image):
    with rock.create_sandbox(image=base_image, network="model", trajectory_id="e2e-1") as sb:
        result = call_inside(sb, {"model": "m", "messages": MESSAGES})
        assert result["status"] == 200
        reply = json.loads("".join(p for _, p in result["pieces"]))
        assert reply["choices"][0]["message"]["content"] == "the answer"
        [chunk] = sb.trajectory()
    check_chunk(chunk, MESSAGES, "the answer")
    assert chunk.trajectory_id == "e2e-1" and chunk.sandbox_id == sb.id


def test_streaming_through_rock_arrives_in_pieces(rock, base_image):
    first = {"choices": [{"index": 0, "delta": {"content": "early "}, "token_ids": [1], "finish_reason": None}]}
    last = {"choices": [{"index": 0, "delta": {"content": "late"}, "token_ids": [2], "finish_reason": "stop"}]}
    raw = sse_reply([first, last])
    up = MisbehavingUpstream(raw, pause_after=raw.index(b"data: ", raw.index(b"early")), pause_s=1.0)
    try:
        with rock.create_sandbox(image=base_image, network="model", model_upstream=up.url) as sb:
            result = call_inside(sb, {"messages": MESSAGES, "stream": True})
            [chunk] = sb.trajectory()
    finally:
        up.close()
    (t_first, p_first), *rest = result["pieces"]
    assert "early" in p_first and "late" not in p_first and rest[-1][0] - t_first >= 0.8
    assert chunk.response.text == "early late" and chunk.response_token_ids == [1, 2]


def test_another_sandboxs_token_is_refused(rock, base_image, upstream):
    with (
        rock.create_sandbox(image=base_image, network="model") as a,
        rock.create_sandbox(image=base_image, network="model") as b,
    ):
        key_b = b.exec("printf %s $OPENAI_API_KEY").stdout
        assert key_b and key_b != a.exec("printf %s $OPENAI_API_KEY").stdout
        seen = len(upstream.requests)
        result = call_inside(a, {"messages": MESSAGES}, key=key_b)
        assert result["status"] == 401
        assert len(upstream.requests) == seen and a.trajectory() == []


def test_32_sandboxes_at_once_each_recorded_under_their_own_trajectory(rock, base_image):
    with ThreadPoolExecutor(8) as pool:
        boxes = list(
            pool.map(
                lambda i: rock.create_sandbox(image=base_image, network="model", trajectory_id=f"traj-{i}"), range(N)
            )
        )
    try:

        def call(i: int) -> dict:
            msgs = [{"role": "user", "content": f"I am sandbox {i}"}]
            return call_inside(boxes[i], {"messages": msgs, "stream": i % 2 == 1})

        with ThreadPoolExecutor(N) as pool:
            results = list(pool.map(call, range(N)))
        assert [r["status"] for r in results] == [200] * N
        answers = set()
        for i, sb in enumerate(boxes):
            [chunk] = sb.trajectory()
            assert chunk.trajectory_id == f"traj-{i}" and chunk.sandbox_id == sb.id
            assert bytes(chunk.prompt_token_ids).decode() == render_prompt(
                [{"role": "user", "content": f"I am sandbox {i}"}]
            )
            assert answer_text(results[i]) == chunk.response.text  # the very answer recorded
            answers.add(chunk.response.text)
        assert answers == {f"answer {i}" for i in range(N)}
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda sb: sb.delete(), boxes))


def test_replay_from_answers_from_the_recorded_trajectory_without_the_upstream(rock, base_image):
    with ScriptedServer(["recorded answer", "a second, different answer"]) as up:
        with rock.create_sandbox(image=base_image, network="model", model_upstream=up.url) as a:
            first = call_inside(a, {"model": "m", "messages": MESSAGES})
            assert first["status"] == 200 and answer_text(first) == "recorded answer"
            assert len(up.requests) == 1
            with rock.create_sandbox(image=base_image, network="model", replay_from=a.id) as b:
                assert b.info.replay_from == a.id
                again = call_inside(b, {"model": "m", "messages": MESSAGES})
                assert again["status"] == 200 and answer_text(again) == "recorded answer"
                assert len(up.requests) == 1  # the upstream saw nothing new
                [chunk] = b.trajectory()
                assert chunk.response.text == "recorded answer"
        # a removed sandbox's trajectory still replays
        with rock.create_sandbox(image=base_image, network="model", replay_from=a.id) as c:
            assert answer_text(call_inside(c, {"model": "m", "messages": MESSAGES})) == "recorded answer"
        assert len(up.requests) == 1


def test_replay_from_bad_input(rock, base_image):
    with pytest.raises(errors.SandboxNotFound, match="sb-nosuchthing"):
        rock.create_sandbox(image=base_image, network="model", replay_from="sb-nosuchthing")
    with pytest.raises(errors.RockError) as e:
        rock.create_sandbox(image=base_image, replay_from="sb-nosuchthing")
    assert e.value.status == 422 and "network" in str(e.value)
    with pytest.raises(errors.RockError) as e:
        rock.create_sandbox(image=base_image, network="model", replay_from="../../etc")
    assert e.value.status == 422
    with rock.create_sandbox(image=base_image, network="model") as quiet:  # known, but nothing recorded
        with pytest.raises(errors.RockError) as e:
            rock.create_sandbox(image=base_image, network="model", replay_from=quiet.id)
        assert e.value.status == 422 and quiet.id in str(e.value)


def test_model_calls_work_again_after_the_manager_is_killed_and_restarted(base_image, tmp_path):
    state = tmp_path / "state"
    with ScriptedServer(["before the crash", "after the crash", "after the second crash"]) as up:
        first = RockProcess(model_upstream=up.url, state_dir=state).start()
        try:
            with first.client() as c:
                sb = c.create_sandbox(image=base_image, network="model")
                assert answer_text(call_inside(sb, {"messages": MESSAGES})) == "before the crash"
        finally:
            first.kill()
        with RockProcess(model_upstream=up.url, state_dir=state, token=first.token) as second, second.client() as c:
            again = c.sandbox(sb.id)
            result = call_inside(again, {"messages": MESSAGES})
            assert result["status"] == 200 and answer_text(result) == "after the crash"
            assert [ch.response.text for ch in again.trajectory()] == ["before the crash", "after the crash"]
            # a proxy that died with its container (restarted) is started again on the next restart
            again.exec("pkill -f [m]odelproxy")
            assert again.exec("pgrep -f [m]odelproxy").exit_code == 1
            second.kill()
        with RockProcess(model_upstream=up.url, state_dir=state, token=first.token) as third, third.client() as c:
            result = call_inside(c.sandbox(sb.id), {"messages": MESSAGES})
            assert result["status"] == 200 and answer_text(result) == "after the second crash"
