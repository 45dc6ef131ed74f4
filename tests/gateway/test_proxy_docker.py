"""The ModelProxy inside a real rock/base:bookworm container (`--network none`, bare python3),
wired exactly as ModelAttachment says, talking to the gateway over the mounted socket:
`.venv/bin/pytest tests/gateway/test_proxy_docker.py -m docker`.
"""

from __future__ import annotations

import json
import uuid

import pytest
from gwtools import CLIENT, MESSAGES, MisbehavingUpstream, check_chunk, recorded, sse_reply

from iflow_cli.testing.scripted_server import ScriptedServer

pytestmark = pytest.mark.docker


@pytest.fixture
def sandbox(docker_client, base_image):
    """start(att) -> a running container wired to the gateway by `att`, with the proxy started."""
    from docker.types import Mount

    made = []

    def start(att):
        container = docker_client.containers.run(
            base_image,
            ["sleep", "infinity"],
            detach=True,
            network_mode="none",
            environment=att.env,
            labels={"ale.rock": "1", "ale.rock.sandbox": att.sandbox_id, "ale.rock.test": "gateway"},
            mounts=[Mount(target=t, source=s, type="bind", read_only=ro) for s, t, ro in att.mounts],
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            name=f"gwtest-{uuid.uuid4().hex[:8]}",
        )
        made.append(container)
        code, out = container.exec_run(att.command)  # --daemon: returns once the proxy listens
        assert code == 0, out
        return container

    yield start
    for c in made:
        c.remove(force=True)


def call_inside(container, body: dict, key: str | None = None) -> dict:
    code, out = container.exec_run(["python3", "-c", CLIENT, json.dumps(body)] + ([key] if key else []))
    assert code == 0, out.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


def test_agent_inside_gets_the_answer_and_the_chunk_matches(harness, sandbox):
    with ScriptedServer(["hello from the model"]) as up:
        h = harness(up.url)
        att = h.attach("dock1", trajectory_id="t-dock")
        box = sandbox(att)
        result = call_inside(box, {"model": "m", "messages": MESSAGES})
    assert result["status"] == 200
    reply = json.loads("".join(p for _, p in result["pieces"]))
    assert reply["choices"][0]["message"]["content"] == "hello from the model"
    [chunk] = recorded(h.gw, "dock1")
    check_chunk(chunk, MESSAGES, "hello from the model")
    assert chunk.trajectory_id == "t-dock"
    # The sandbox can use the socket but not replace it.
    code, out = box.exec_run(["bash", "-c", "rm -f /run/rock/model.sock; test -S /run/rock/model.sock"])
    assert code == 0, out


def test_stream_arrives_in_pieces_inside(harness, sandbox):
    first = {"choices": [{"index": 0, "delta": {"content": "early "}, "token_ids": [1], "finish_reason": None}]}
    last = {"choices": [{"index": 0, "delta": {"content": "late"}, "token_ids": [2], "finish_reason": "stop"}]}
    raw = sse_reply([first, last])
    up = MisbehavingUpstream(raw, pause_after=raw.index(b"data: ", raw.index(b"early")), pause_s=1.0)
    h = harness(up.url)
    box = sandbox(h.attach("dock1"))
    result = call_inside(box, {"messages": MESSAGES, "stream": True})
    up.close()
    (t_first, p_first), *rest = result["pieces"]
    assert "early" in p_first and "late" not in p_first
    assert rest and rest[-1][0] - t_first >= 0.8 and "late" in "".join(p for _, p in rest)
    assert recorded(h.gw, "dock1")[0].response.text == "early late"


def test_another_sandboxs_token_is_refused_inside(harness, sandbox):
    with ScriptedServer(["mine"]) as up:
        h = harness(up.url)
        a, b = h.attach("dock-a"), h.attach("dock-b")
        box = sandbox(a)
        result = call_inside(box, {"messages": MESSAGES}, key=b.token)
        assert result["status"] == 401 and "unauthorized" in result["pieces"][0][1]
        assert up.requests == [] and recorded(h.gw, "dock-a") == []
