"""iflow -p "fix the failing test" --yolo -o info.json   (or `python3 -m iflow_cli`; no -p: interactive)

The command line of the agent: batch mode prints the final answer on stdout (progress and
errors on stderr), writes execution info with -o and exits 0 only when the agent finished.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from iflow_cli.agent import Agent, RunResult, Trajectory, check_history
from iflow_cli.config import ConfigError, Settings, coerce, describe_keys, load_settings
from iflow_cli.context import load_memory
from iflow_cli.executors import Executor, get_executor
from iflow_cli.models import ModelError, OpenAIModel, get_model
from iflow_cli.prompts import system_prompt
from iflow_cli.tools import Toolbox
from iflow_cli.version import __version__

EPILOG = f"""settings (JSON keys of ~/.iflow/settings.json and ./.iflow/settings.json; env IFLOW_<key>):
{describe_keys()}

layers, later wins: defaults < ~/.iflow/settings.json < ./.iflow/settings.json < IFLOW_* env < flags.
baseUrl and apiKey fall back to OPENAI_BASE_URL and OPENAI_API_KEY.

examples:
  iflow -p "add a test for utils.parse" --yolo -o info.json --trajectory run.jsonl
  iflow --base-url http://127.0.0.1:8000/v1 -m rome-tiny        # interactive
  iflow -p "run the tests" --yolo --sandbox http://127.0.0.1:8080#SANDBOX_ID   # token: ROCK_API_TOKEN
  iflow -p "hi" --set modelProvider=scripted --set scriptFile=script.json   # the shipped test model

exit status: 0 finished; 1 the agent stopped for another reason (see termination_reason); 2 bad setup."""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="iflow",
        description="iflow: a terminal coding agent for any OpenAI-compatible model. "
        "Interactive without -p; batch with -p.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("-p", "--prompt", help="run one task in batch mode and print the final answer ('-' reads stdin)")
    ap.add_argument("--yolo", action="store_true", help="allow every tool without asking (approvalMode=yolo)")
    ap.add_argument("--approval-mode", choices=["default", "autoEdit", "yolo"], help="default asks (refuses in batch)")
    ap.add_argument("--max-turns", type=int, help="maxSessionTurns: model calls before stopping")
    ap.add_argument("--timeout", type=float, help="wall-clock seconds for the session")
    ap.add_argument("-m", "--model", help="modelName (default: the first model the server lists)")
    ap.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", help="API key (default: apiKey setting, then OPENAI_API_KEY)")
    ap.add_argument("-o", "--output", help="write execution info JSON here (batch mode)")
    ap.add_argument("--trajectory", help="append the session as JSON lines here, after every step")
    ap.add_argument(
        "--history",
        metavar="FILE",
        help="batch mode: continue this conversation (a JSON list of OpenAI messages after the system prompt, "
        "the first the -p task) instead of starting afresh",
    )
    ap.add_argument("--sandbox", help="run tools in a ROCK sandbox: URL#SANDBOX_ID (token from ROCK_API_TOKEN)")
    ap.add_argument("--cwd", help="working directory for the tools (default: the current one)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, e.g. --set tokensLimit=16000"
    )
    ap.add_argument("--quiet", action="store_true", help="batch mode: no progress lines on stderr")
    ap.add_argument("--version", action="version", version=f"iflow {__version__}")
    return ap


def flag_settings(args: argparse.Namespace) -> dict:
    """Flags as settings keys; --set pairs are parsed like environment values."""
    flags = {
        "maxSessionTurns": args.max_turns,
        "timeout": args.timeout,
        "modelName": args.model,
        "baseUrl": args.base_url,
        "apiKey": args.api_key,
        "sandbox": args.sandbox,
        "approvalMode": "yolo" if args.yolo else args.approval_mode,
    }
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        flags[key] = coerce(key, value, f"--set {key}", from_text=True)
    return flags


def err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def progress(kind: str, data: dict) -> None:
    """One short stderr line per event, so a batch run never looks stuck."""
    if kind == "tool":
        args = json.dumps(data["args"], ensure_ascii=False)
        err(f"  -> {data['name']} {args[:160]}{'...' if len(args) > 160 else ''}")
    elif kind == "tool_result" and not data["ok"]:
        err(f"  <- {data['name']} failed: {data['output'].splitlines()[0][:160] if data['output'] else ''}")
    elif kind == "format_error":
        err(f"  !! format error: {data['message'][:200]}")
    elif kind == "compression":
        err(f"  (context compressed: ~{data['before']} -> ~{data['after']} tokens)")


def build_agent(settings: Settings, args, executor: Executor, model: OpenAIModel, approve, show) -> Agent:
    toolbox = Toolbox(
        executor,
        settings.approval_mode,
        settings.core_tools,
        settings.exclude_tools,
        settings.shell_timeout,
        settings.tool_output_limit,
        approve,
    )
    where = f"ROCK sandbox {settings.sandbox}" if settings.sandbox else "local machine"
    memory = load_memory(Path.cwd() if settings.sandbox else Path(executor.cwd))
    text_schemas = toolbox.schemas() if settings.tool_call_mode == "text" else None
    prompt = system_prompt(executor.cwd, where, memory, text_schemas)
    trajectory = Trajectory(args.trajectory) if args.trajectory else None
    return Agent(model, toolbox, prompt, settings, trajectory, log=err, show=show)


def info(result: RunResult | None, model: OpenAIModel | None, error: str = "", reason: str = "") -> dict:
    """Execution info for -o: what a script or the trainer needs to judge the run."""
    base = {"model": model.model if model else "", "base_url": model.base_url if model else ""}
    if result is None:  # the session never started
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        result = RunResult("", "", reason, 0, usage, 0.0, 0.0, 0.0, [], error)
    return {**base, **asdict(result), "finished": result.finished}


def write_info(path: str | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_history(path: str | None, prompt: str) -> list[dict] | None:
    """The messages of --history FILE (None without it); ConfigError when they cannot be continued."""
    if not path:
        return None
    try:
        return check_history(json.loads(Path(path).read_text(encoding="utf-8")), prompt)
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise ConfigError(f"--history {path}: {e}") from e


def setup(args) -> tuple[Settings, Executor, OpenAIModel]:
    """Settings, executor and a probed model; raises ConfigError, OSError (ROCK, --cwd) or ModelError."""
    settings = load_settings(flag_settings(args))
    executor = get_executor(settings.sandbox, args.cwd)
    model = get_model(settings, log=err)
    model.probe()
    return settings, executor, model


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.history and args.prompt is None:
        ap.error("--history needs -p (the task it continues)")
    model = None
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    try:
        history = load_history(args.history, prompt) if prompt is not None else None
        settings, executor, model = setup(args)
    except (ConfigError, OSError) as e:  # RockError is an OSError too
        err(f"iflow: {e}")
        write_info(args.output, info(None, model, str(e), "config_error"))
        return 2
    except ModelError as e:
        err(f"iflow: {e}")
        write_info(args.output, info(None, model, str(e), "model_error"))
        return 2
    if args.prompt is None:
        from iflow_cli.repl import repl

        return repl(settings, args, executor, model)
    # A supervisor's SIGTERM (roll's timeout, `docker stop`) ends the run like Ctrl-C: tools' process
    # groups are killed and the execution info is still written.
    signal.signal(signal.SIGTERM, interrupt)
    agent = build_agent(settings, args, executor, model, approve=None, show=None if args.quiet else progress)
    result = agent.run(prompt, history)
    if result.answer:
        print(result.answer, flush=True)
    write_info(args.output, info(result, model))
    return 0 if result.finished else 1
