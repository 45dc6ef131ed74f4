"""`"network": "model"` sandboxes: the in-sandbox proxy answers on loopback and calls are recorded.

    .venv/bin/pytest tests/rock/test_model_network.py -q

The upstream is iflow's scripted OpenAI-compatible server, registered in the package for tests.
"""

from __future__ import annotations

import pytest

from iflow_cli.testing.scripted_server import ScriptedServer
from rock import errors
from rock.launch import RockProcess

pytestmark = pytest.mark.docker

CALL = """
import json, os, urllib.request
req = urllib.request.Request(
    os.environ["OPENAI_BASE_URL"] + "/chat/completions",
    data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode(),
    headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"], "Content-Type": "application/json"},
)
print(json.load(urllib.request.urlopen(req, timeout=30))["choices"][0]["message"]["content"])
"""


@pytest.fixture(scope="module")
def upstream():
    with ScriptedServer(["first answer", "second answer"]) as s:
        yield s


def test_model_sandbox_reaches_the_upstream_and_records_chunks(upstream, tmp_path, docker_client):
    with RockProcess(state_dir=tmp_path / "s", model_upstream=upstream.url) as rock, rock.client() as c:
        with c.create_sandbox(network="model", trajectory_id="traj-1") as sb:
            r = sb.exec(["python3", "-c", CALL], timeout=60)
            assert (r.exit_code, r.stdout) == (0, "first answer\n"), r.stderr
            assert sb.exec("ls /sys/class/net").stdout.split() == ["lo"]
            chunks = sb.trajectory()
            assert [ch.trajectory_id for ch in chunks] == ["traj-1"]
            assert chunks[0].sandbox_id == sb.id and chunks[0].response_token_ids
        with pytest.raises(errors.SandboxNotFound):
            c.sandbox(sb.id)


def test_model_network_without_an_upstream_is_422(rock_server, client):
    with pytest.raises(errors.ValidationFailed, match="model_upstream"):
        client.create_sandbox(network="model")
    with pytest.raises(errors.ValidationFailed, match="not-a-url"):
        client.create_sandbox(network="model", model_upstream="not-a-url")


@pytest.mark.slow
def test_model_sandbox_survives_a_manager_sigkill(tmp_path):
    with ScriptedServer(["before", "after"]) as up:
        state = tmp_path / "s"
        first = RockProcess(state_dir=state, model_upstream=up.url).start()
        with first.client() as c:
            sb = c.create_sandbox(network="model")
            assert sb.exec(["python3", "-c", CALL], timeout=60).stdout == "before\n"
        first.kill()
        with RockProcess(state_dir=state, model_upstream=up.url, token=first.token) as second, second.client() as c:
            again = c.sandbox(sb.id)
            r = again.exec(["python3", "-c", CALL], timeout=60)
            assert (r.exit_code, r.stdout) == (0, "after\n"), r.stderr
            assert len(again.trajectory()) == 2
