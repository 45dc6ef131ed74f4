"""Task images: rock builds a Dockerfile + context with no network, tagged by content hash, cached.

    .venv/bin/pytest tests/rock/test_images.py -q

Against a real `rock serve` (tests/rock/conftest.py) and the real daemon. The last test builds the imported
Terminal-Bench and Harbor fixtures and checks that each resolves with its golden solution and not without.
"""

from __future__ import annotations

import asyncio
import io
import re
import tarfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from rock import errors
from roll.tasks.environment import ensure_image, ensure_image_async
from roll.tasks.loader import load_task_dir
from roll.tasks.spec import TaskSpec

pytestmark = pytest.mark.docker
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
DOCKERFILE = "FROM rock/base:bookworm\nWORKDIR /app\nCOPY data/hello.txt /app/hello.txt\nRUN tr a-z A-Z < hello.txt > upper.txt\n"


@pytest.fixture
def built(docker_client):
    """Tags a test built with fresh content; removed afterwards."""
    tags: list[str] = []
    yield tags
    for tag in set(tags):
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:
            pass


def test_build_is_cached_by_content(client, built):
    nonce = uuid.uuid4().hex[:8]
    t0 = time.monotonic()
    tag = client.build_image(DOCKERFILE, {"data/hello.txt": f"hello {nonce}\n"})
    built_s = time.monotonic() - t0
    built.append(tag)
    assert re.fullmatch(r"ale-task:[0-9a-f]{16}", tag)
    t0 = time.monotonic()
    assert client.build_image(DOCKERFILE, {"data/hello.txt": f"hello {nonce}\n"}) == tag
    cached_s = time.monotonic() - t0
    assert cached_s < 1.0 and cached_s < built_s, (built_s, cached_s)
    with client.create_sandbox(image=tag) as sb:
        assert sb.exec("cat /app/upper.txt").stdout == f"HELLO {nonce.upper()}\n"
    other = client.build_image(DOCKERFILE, {"data/hello.txt": f"bye {nonce}\n"})
    built.append(other)
    assert other != tag


def test_async_client_builds_the_same_tag(rock_server, built):
    nonce = uuid.uuid4().hex[:8]

    async def go():
        async with rock_server.async_client() as c:
            return await c.build_image(DOCKERFILE, {"data/hello.txt": nonce})

    tag = asyncio.run(go())
    built.append(tag)
    with rock_server.client() as c:
        assert c.build_image(DOCKERFILE, {"data/hello.txt": nonce}) == tag


def test_failing_build_carries_the_log_tail(client):
    nonce = uuid.uuid4().hex[:8]
    with pytest.raises(errors.ImageBuildFailed) as e:
        client.build_image(f"FROM rock/base:bookworm\nRUN echo marker-{nonce} && ls /no-such-dir-{nonce}\n")
    msg = e.value.message
    assert msg.startswith("image build failed: ") and "returned a non-zero code: 2" in msg
    assert f"marker-{nonce}" in msg and f"/no-such-dir-{nonce}" in msg and "\x1b[" not in msg


def test_build_has_no_network(client):
    probe = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
    with pytest.raises(errors.ImageBuildFailed, match="Network is unreachable"):
        client.build_image(f'FROM rock/base:bookworm\nRUN python3 -c "{probe}" # {uuid.uuid4().hex}\n')


def test_unknown_base_image_is_one_line(client):
    with pytest.raises(errors.ImageNotFound) as e:
        client.build_image("FROM ghcr.io/nowhere/never-pulled:1\nRUN true\n")
    assert "ghcr.io/nowhere/never-pulled:1" in e.value.message and "\n" not in e.value.message


def test_bad_contexts(rock_server):
    def tar(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    headers = {"Authorization": f"Bearer {rock_server.token}"}
    cases = [
        (tar({"notes.txt": b"x"}), 400, "bad_request", "no Dockerfile"),
        (tar({"Dockerfile": b"FROM rock/base:bookworm\n", "../evil": b"x"}), 400, "invalid_path", "'..'"),
        (b"not a tar at all", 400, "bad_request", "not a tar"),
    ]
    for body, status, code, words in cases:
        r = httpx.post(f"{rock_server.url}/v1/images", content=body, headers=headers, timeout=30)
        assert r.status_code == status and r.json()["error"]["code"] == code and words in r.json()["error"]["message"]
    assert httpx.post(f"{rock_server.url}/v1/images", content=b"", timeout=30).status_code == 401


def _resolved(spec: TaskSpec, sb, out) -> bool:
    """How the harness grades: pytest's -rA summary, the reward file, or the exit status."""
    if spec.grading == "pytest":
        summary = [ln for ln in out.stdout.splitlines() if re.match(r"^=+ .* in [\d.]+s", ln)]
        return bool(summary) and "passed" in summary[-1] and not re.search(r"failed|error", summary[-1])
    if spec.grading == "reward_file":
        return sb.exec("cat /logs/verifier/reward.txt").stdout.strip() == "1"
    return out.exit_code == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "task", ["terminal-bench/word-count", "terminal-bench/backup-notes", "harbor/csv-total", "harbor/hello-image"]
)
def test_imported_fixture_resolves_with_its_solution_only(client, rock_server, task):
    spec = load_task_dir(FIXTURES / task)
    image = ensure_image(client, spec)
    assert image == asyncio.run(_ensure_async(rock_server, spec))
    for solve in (True, False):
        with client.create_sandbox(image=image, memory="512m") as sb:
            for rel, text in spec.tests.items():
                sb.write_file(f"/tests/{rel}", text)
            sb.exec(["mkdir", "-p", spec.workdir, "/logs/verifier"])
            if solve:
                done = sb.exec(["bash", "-c", spec.solution], cwd=spec.workdir, timeout=60)
                assert done.exit_code == 0, done.stderr
            out = sb.exec(["bash", f"/tests/{spec.test_entry}"], cwd=spec.workdir, timeout=spec.test_timeout_s)
            assert _resolved(spec, sb, out) is solve, out.stdout[-2000:] + out.stderr[-2000:]


async def _ensure_async(rock_server, spec: TaskSpec) -> str:
    async with rock_server.async_client() as c:
        return await ensure_image_async(c, spec)
