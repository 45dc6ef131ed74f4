"""schemathesis over ROCK's OpenAPI document: no request it generates, valid or not, gets a 5xx,
and every error is `{"error": {"code", "message"}}`.

    .venv/bin/pytest tests/rock/test_rock_openapi_fuzz.py -q

Against a real `rock serve` on the real daemon; a generated create that succeeds makes a real
sandbox, removed again at once. For every operation of the document both generation modes run:
positive (what the schema allows; values over the server's maxima must be 422s) and negative
(wrong types, missing fields, junk bodies). Operations on one sandbox run twice: with generated
ids (404s) and with the id of a live sandbox, so that their bodies and queries reach the backend.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

pytestmark = [pytest.mark.docker, pytest.mark.slow]
EXAMPLES = 25  # per operation, mode and id choice


def check_answer(case, response) -> None:
    what = f"{case.method} {case.formatted_path} query={case.query} body={str(case.body)[:200]}"
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.text[:300]}"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, (what, body)
        assert isinstance(body["error"]["code"], str) and body["error"]["message"], (what, body)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_5xx_and_every_error_in_shape(rock_server, mode):
    auth = {"Authorization": f"Bearer {rock_server.token}"}
    ops = [r.ok() for r in schemathesis.openapi.from_url(f"{rock_server.url}/openapi.json").get_all_operations()]
    # GET /v1/chunks/stream never ends on valid input (keep-alives); its 4xx are checked in tests/roll/test_stream.py
    ops = [op for op in ops if op.path != "/v1/chunks/stream"]
    assert len(ops) >= 15, [op.label for op in ops]
    live = httpx.post(f"{rock_server.url}/v1/sandboxes", json={}, headers=auth, timeout=60).json()["id"]
    seen: dict[int, int] = {}
    nothing_to_generate = []

    def fuzz(op, **fixed) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode, **fixed))
        def run(case):
            response = case.call(base_url=rock_server.url, headers=auth, timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            if response.status_code == 201 and case.formatted_path == "/v1/sandboxes":
                httpx.delete(f"{rock_server.url}/v1/sandboxes/{response.json()['id']}", headers=auth, timeout=60)
            check_answer(case, response)

        try:
            run()
        except Unsatisfiable:  # negative mode on an operation without inputs (GET /healthz, ...)
            nothing_to_generate.append(op.label)

    try:
        for op in ops:
            fuzz(op)
            if "{sandbox_id}" in op.path and op.method.upper() != "DELETE":
                fuzz(op, path_parameters={"sandbox_id": live})
    finally:
        httpx.delete(f"{rock_server.url}/v1/sandboxes/{live}", headers=auth, timeout=60)
        for snap in httpx.get(f"{rock_server.url}/v1/snapshots", headers=auth).json()["snapshots"]:
            if snap["sandbox_id"] == live:  # generated snapshot calls commit real images
                httpx.delete(f"{rock_server.url}/v1/snapshots/{snap['snapshot_id']}", headers=auth, timeout=60)
    print(f"{mode.value}: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    print(f"  nothing to generate for: {nothing_to_generate}")
    assert sum(seen.values()) >= len(ops) * 2 and 404 in seen and 422 in seen
