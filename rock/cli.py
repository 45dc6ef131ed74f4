"""`rock`: the sandbox manager's command line (`rock --help`, `python -m rock --help`).

    rock serve --token T                       # the REST server (FastAPI + uvicorn)
    rock sandbox create --memory 512m          # prints the new sandbox id
    rock sandbox exec ID -- ls -la /           # streams output, exits with the command's status
    rock sandbox cp ./dir ID:/work ; rock sandbox cp ID:/work/out.txt .
    rock sandbox ls | rm ID | snapshot ID | trajectory ID
    rock image build                           # the rock/base:bookworm sandbox image

Client commands find the server from --url/--token, else ROCK_URL/ROCK_API_TOKEN, else the
token file a local `rock serve` wrote into its state dir.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from rock import errors
from rock.config import Limits, ServerConfig, default_state_dir
from rock.models import DEFAULT_IMAGE, parse_memory


def _kv(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"error: {flag} wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _size(text: str) -> int:
    try:
        return parse_memory(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _size_or_zero(text: str) -> int:
    return 0 if text.strip() == "0" else _size(text)


# ---- serve ------------------------------------------------------------------------------------


def _serve_token(args, state_dir: Path) -> str:
    token = args.token or os.environ.get("ROCK_API_TOKEN")
    if token:
        return token
    # No token given: make one and leave it where local `rock sandbox ...` commands look.
    token = secrets.token_urlsafe(24)
    state_dir.mkdir(parents=True, exist_ok=True)
    f = state_dir / "token"
    f.write_text(token)
    f.chmod(0o600)
    print(f"rock serve: generated API token, saved in {f}", file=sys.stderr)
    return token


def _check_docker() -> None:
    import docker

    try:
        docker.from_env(timeout=10).ping()
    except Exception as e:
        raise SystemExit(f"error: no Docker engine answers ({e}); start one with `make docker`") from None


def _watch_parent(pid: int) -> None:
    """SIGTERM ourselves (a clean shutdown, honouring --on-exit) once process `pid` is gone.

    RockProcess starts the server in its own session so that a Ctrl-C of the driver does not
    kill it before the driver's cleanup; this makes sure a driver that dies hard still takes
    the server and its sandboxes with it.
    """

    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass  # alive, owned by another user

    threading.Thread(target=watch, name="rock-parent-watch", daemon=True).start()


def _raise_nofile_limit() -> None:
    """Lift the soft open-files limit to the hard one: each model sandbox holds a socket and the
    proxy's connection, each call an agent connection, and 1024 (a common default) is soon reached."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit; the gateway logs what it cannot accept


def cmd_serve(args) -> int:
    import uvicorn

    from rock.server import create_app

    state_dir = Path(args.state_dir).expanduser()
    given = {"max_cpus": args.max_cpus, "max_memory": args.max_memory, "max_pids_limit": args.max_pids,
             "max_upload_bytes": args.max_upload, "max_disk": args.disk_max}  # fmt: skip
    limits = Limits(**{k: v for k, v in given.items() if v})
    if args.disk_default is not None:
        limits.disk = args.disk_default or None  # 0: no default, sandboxes that do not ask are unbounded
    if limits.disk is not None and limits.disk > limits.max_disk:
        raise SystemExit(f"error: --disk-default {limits.disk} is over --disk-max {limits.max_disk}")
    for d in args.allow_mount or []:
        if not Path(d).is_dir():
            raise SystemExit(f"error: --allow-mount {d}: not a directory")
    config = ServerConfig(
        host=args.host,
        port=args.port,
        token=_serve_token(args, state_dir),
        model_upstream=args.model_upstream,
        state_dir=state_dir,
        allow_mounts=[Path(d) for d in args.allow_mount or []],
        on_exit=args.on_exit,
        warm_pool=args.warm_pool,
        pool_specs=args.pool_image or [],
        reap_interval_s=args.reap_interval,
        limits=limits,
        ray_address=args.ray,
        db=Path(args.db).expanduser() if args.db else None,
    )
    _check_docker()
    _raise_nofile_limit()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "url").write_text(f"http://{args.host}:{args.port}")
    if args.exit_with:
        _watch_parent(args.exit_with)
    uvicorn.run(
        create_app(config), host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5
    )
    return 0


# ---- client commands --------------------------------------------------------------------------


def _client(args):
    from rock.sdk import Client

    state_dir = default_state_dir()
    url = args.url or os.environ.get("ROCK_URL")
    if not url and (state_dir / "url").exists():
        url = (state_dir / "url").read_text().strip()
    token = args.token or os.environ.get("ROCK_API_TOKEN")
    if not token and (state_dir / "token").exists():
        token = (state_dir / "token").read_text().strip()
    return Client(url, token)


def _mounts(items: list[str] | None) -> list[dict]:
    out = []
    for item in items or []:
        parts = item.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise SystemExit(f"error: --mount wants SRC:TARGET[:ro|rw], got {item!r}")
        out.append(
            {"source": os.path.abspath(parts[0]), "target": parts[1], "read_only": len(parts) == 2 or parts[2] == "ro"}
        )
    return out


def cmd_create(args) -> int:
    body = {
        "image": args.image,
        "network": args.network,
        "env": _kv(args.env, "--env"),
        "labels": _kv(args.label, "--label"),
        "mounts": _mounts(args.mount),
    }
    for key in ("cpus", "memory", "disk", "pids_limit", "model_upstream", "ttl_seconds", "snapshot", "trajectory_id"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    with _client(args) as c:
        sb = c.create_sandbox(**body)
    print(sb.info.model_dump_json(indent=2) if args.json else sb.id)
    return 0


def cmd_ls(args) -> int:
    with _client(args) as c:
        boxes = c.list_sandboxes()
    if args.json:
        print(json.dumps([b.info.model_dump() for b in boxes], indent=2))
        return 0
    print(f"{'ID':<18} {'IMAGE':<28} {'CPUS':>5} {'MEMORY':>8} {'NETWORK':<8} STATUS")
    for b in boxes:
        i = b.info
        print(f"{i.id:<18} {i.image:<28} {i.cpus:>5g} {i.memory >> 20:>6}Mi {i.network:<8} {i.status}")
    return 0


def cmd_exec(args) -> int:
    if not args.cmd:
        raise SystemExit("error: give a command after the sandbox id, e.g. rock sandbox exec ID -- ls /")
    cmd = args.cmd[0] if len(args.cmd) == 1 else args.cmd
    with _client(args) as c:
        sb = c.sandbox(args.id)
        code = None
        for chunk in sb.exec_stream(cmd, timeout=args.timeout, env=_kv(args.env, "--env") or None, cwd=args.cwd):
            if chunk.type == "exit":
                code = chunk.exit_code
                if chunk.timed_out:
                    print(f"rock: timed out after {args.timeout}s", file=sys.stderr)
            else:
                stream = sys.stdout if chunk.type == "stdout" else sys.stderr
                stream.write(chunk.data)
                stream.flush()
    return 124 if code is None else code


def _split_remote(spec: str) -> tuple[str | None, str]:
    head, sep, tail = spec.partition(":")
    if sep and tail.startswith("/") and "/" not in head and head:
        return head, tail
    return None, spec


def cmd_cp(args) -> int:
    (src_id, src), (dst_id, dst) = _split_remote(args.src), _split_remote(args.dst)
    if (src_id is None) == (dst_id is None):
        raise SystemExit("error: exactly one of SRC and DST must be ID:/abs/path")
    with _client(args) as c:
        if dst_id:
            sb = c.sandbox(dst_id)
            if Path(src).is_dir():
                sb.upload_dir(src, dst)
            elif Path(src).is_file():
                sb.write_file(dst, Path(src).read_bytes(), mode=Path(src).stat().st_mode & 0o777)
            else:
                raise SystemExit(f"error: no such local file or directory: {src}")
            return 0
        sb = c.sandbox(src_id)
        try:
            data = sb.read_file(src)
        except errors.IsADirectory:
            sb.download_dir(src, dst)
            return 0
        target = Path(dst) / Path(src).name if Path(dst).is_dir() else Path(dst)
        target.write_bytes(data)
    return 0


def cmd_rm(args) -> int:
    with _client(args) as c:
        for sid in args.ids:
            c.sandbox(sid).delete()
    return 0


def cmd_snapshot(args) -> int:
    with _client(args) as c:
        print(c.sandbox(args.id).snapshot().snapshot_id)
    return 0


def cmd_trajectory(args) -> int:
    with _client(args) as c:
        for chunk in c.sandbox(args.id).trajectory():
            print(chunk.model_dump_json())
    return 0


def cmd_image_build(args) -> int:
    script = Path(__file__).resolve().parents[1] / "scripts" / "build-base-image.sh"
    if not script.exists():
        raise SystemExit(f"error: {script} not found (run from a checkout of the repository)")
    return subprocess.call(["bash", str(script), args.tag])


# ---- parser -----------------------------------------------------------------------------------


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="server URL (default: $ROCK_URL, else the local server's, else http://127.0.0.1:8080)")
    p.add_argument("--token", help="API token (default: $ROCK_API_TOKEN, else the local server's token file)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rock", description="ROCK: isolated Docker sandboxes for agents, over REST.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "serve",
        help="run the sandbox manager (REST v1 on FastAPI/uvicorn)",
        description="Run the sandbox manager. OpenAPI at /openapi.json; all routes but /healthz "
        "need 'Authorization: Bearer TOKEN'.",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--token", help="API token (default: $ROCK_API_TOKEN, else generated and saved in the state dir)")
    s.add_argument("--model-upstream", help="default OpenAI-compatible URL for sandboxes with network=model")
    s.add_argument("--state-dir", default=str(default_state_dir()), help="SQLite db, sockets, trajectories (~/.rock)")
    s.add_argument("--allow-mount", action="append", metavar="DIR", help="host directory sandboxes may mount (repeat)")
    s.add_argument(
        "--on-exit",
        choices=["remove", "keep"],
        default="remove",
        help="on shutdown remove every sandbox (default) or keep them for the next start to re-adopt",
    )
    s.add_argument(
        "--warm-pool",
        type=int,
        default=0,
        metavar="K",
        help="keep K started containers per (image, resources) spec in use; 0 disables (default)",
    )
    s.add_argument(
        "--pool-image",
        action="append",
        metavar="IMAGE",
        help="keep this image warm from start-up with default resources (repeat)",
    )
    s.add_argument(
        "--ray", metavar="ADDRESS", help="place sandboxes on the nodes of this Ray cluster ('auto' or HOST:PORT)"
    )
    s.add_argument(
        "--reap-interval", type=float, default=5.0, metavar="S", help="how often expired sandboxes are removed"
    )
    s.add_argument("--max-cpus", type=float, help="largest cpus a sandbox may ask for (default: host cores)")
    s.add_argument("--max-memory", type=_size, metavar="SIZE", help="largest memory a sandbox may ask for (default 8g)")
    s.add_argument("--max-pids", type=int, metavar="N", help="largest pids_limit a sandbox may ask for (default 4096)")
    s.add_argument(
        "--disk-default",
        type=_size_or_zero,
        metavar="SIZE",
        help="what a sandbox may write on top of its image when its create does not say (default 10g; 0: unbounded); "
        "enforced only on a quota-capable data root (`make docker`)",
    )
    s.add_argument("--disk-max", type=_size, metavar="SIZE", help="largest disk a sandbox may ask for (default 100g)")
    s.add_argument("--db", metavar="PATH", help="SQLite file of the records (default: STATE_DIR/rock.db)")
    s.add_argument(
        "--max-upload", type=_size, metavar="SIZE", help="largest file or tar upload, e.g. 64m (default 256m)"
    )
    s.add_argument("--exit-with", type=int, metavar="PID", help="shut down cleanly once process PID has exited")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=cmd_serve)

    sb = sub.add_parser("sandbox", help="create, use and remove sandboxes").add_subparsers(dest="sub", required=True)
    c = sb.add_parser("create", help="create a sandbox and print its id")
    c.add_argument("--image", default=DEFAULT_IMAGE)
    c.add_argument("--cpus", type=float)
    c.add_argument("--memory", help="e.g. 512m, 2g")
    c.add_argument("--disk", help="what it may write on top of its image, e.g. 2g (default: the server's)")
    c.add_argument("--pids-limit", type=int)
    c.add_argument(
        "--network",
        choices=["none", "model"],
        default="none",
        help="none (default): only loopback; model: also the model proxy on loopback",
    )
    c.add_argument("--model-upstream", help="OpenAI-compatible URL for network=model")
    c.add_argument("--env", action="append", metavar="K=V")
    c.add_argument("--label", action="append", metavar="K=V")
    c.add_argument("--ttl", dest="ttl_seconds", type=float, help="remove the sandbox after this many seconds")
    c.add_argument("--snapshot", help="fork from this snapshot id")
    c.add_argument("--mount", action="append", metavar="SRC:TARGET[:ro|rw]", help="bind mount (read-only default)")
    c.add_argument("--trajectory-id")
    c.add_argument("--json", action="store_true", help="print the whole record")
    c.set_defaults(func=cmd_create)
    c = sb.add_parser("ls", help="list sandboxes")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_ls)
    c = sb.add_parser("exec", help="run a command (one argument runs under bash -c); exits with its status")
    c.add_argument("id")
    c.add_argument("--timeout", type=float, help="kill the command's process tree after this many seconds")
    c.add_argument("--cwd")
    c.add_argument("--env", action="append", metavar="K=V")
    c.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    c.set_defaults(func=cmd_exec)
    c = sb.add_parser("cp", help="copy a file or directory in (SRC ID:/abs) or out (ID:/abs DST)")
    c.add_argument("src")
    c.add_argument("dst")
    c.set_defaults(func=cmd_cp)
    c = sb.add_parser("rm", help="remove sandboxes")
    c.add_argument("ids", nargs="+")
    c.set_defaults(func=cmd_rm)
    c = sb.add_parser("snapshot", help="commit the sandbox's filesystem; prints the snapshot id")
    c.add_argument("id")
    c.set_defaults(func=cmd_snapshot)
    c = sb.add_parser("trajectory", help="print the recorded model calls (chunks) as JSON lines")
    c.add_argument("id")
    c.set_defaults(func=cmd_trajectory)
    for name in ("create", "ls", "exec", "cp", "rm", "snapshot", "trajectory"):
        _client_flags(sb.choices[name])

    im = sub.add_parser("image", help="sandbox images").add_subparsers(dest="sub", required=True)
    c = im.add_parser("build", help="build the base sandbox image with debootstrap (skipped if it exists)")
    c.add_argument("--tag", default=DEFAULT_IMAGE)
    c.set_defaults(func=cmd_image_build)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.func is cmd_exec and args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    try:
        return args.func(args)
    except errors.RockError as e:
        print(f"error: {e.message} ({e.code})", file=sys.stderr)
        return 1
    except httpx.ConnectError as e:
        print(f"error: cannot reach the rock server ({e}); start one with `rock serve`", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
