"""python bench/bench_iflow_compression.py [--turns 60] [--tokens-limit 16000] [--output-tokens 2000]

Context compression of the iflow agent: a scripted session of N tool turns whose outputs are
~2k tokens each, run twice on the real agent loop and tools (local shell) against the scripted
model server, once under tokensLimit with compression and once with an unbounded context.
Reports total prompt tokens sent (the scripted server's own count: UTF-8 bytes of the rendered
prompt, summarisation calls included) with ÷ without compression (target <= 0.5), the largest
request against the limit (target: none over), and the agent's own time per turn (wall time
minus model and tool time). Ends with one JSON line holding "ratio".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iflow_cli.agent import Agent  # noqa: E402
from iflow_cli.config import Settings  # noqa: E402
from iflow_cli.context import SUMMARY_PROMPT  # noqa: E402
from iflow_cli.executors.local import LocalExecutor  # noqa: E402
from iflow_cli.models import OpenAIModel  # noqa: E402
from iflow_cli.prompts import system_prompt  # noqa: E402
from iflow_cli.testing.scripted_server import ScriptedServer, render_prompt  # noqa: E402
from iflow_cli.tools import Toolbox  # noqa: E402

TASK = "Inspect the 60 log shards one by one and report which ones mention errors."
NOTE = (
    "Task: inspect the log shards and report the ones with errors. Files changed: none. "
    "Commands that worked: the printf shard dumps. Findings: no shard mentions an error so far. "
    "What remains: the shards after the last one shown, then the report."
)


def shard_command(turn: int, output_tokens: int) -> str:
    """A shell command printing ~output_tokens bytes (one byte = one token on the scripted server)."""
    line = f"shard {turn:03d} record %04d: status ok, latency nominal, payload checksum verified\n"
    count = max(1, output_tokens // len(line))
    return f"printf '{line}' $(seq 1 {count})"


class Session:
    """The scripted model: N shell turns then an answer; summarisation requests get a state note."""

    def __init__(self, turns: int, output_tokens: int):
        self.turns, self.output_tokens, self.issued = turns, output_tokens, 0

    def __call__(self, body: dict) -> dict | str:
        if body["messages"][0]["content"] == SUMMARY_PROMPT:
            return NOTE
        if self.issued >= self.turns:
            return "No shard mentions an error."
        self.issued += 1
        command = shard_command(self.issued, self.output_tokens)
        return {"tool_calls": [{"name": "run_shell_command", "arguments": {"command": command}}]}


def run(turns: int, output_tokens: int, tokens_limit: int) -> dict:
    with ScriptedServer(Session(turns, output_tokens)) as server, tempfile.TemporaryDirectory() as work:
        settings = Settings(tokens_limit=tokens_limit, max_session_turns=turns + 10, approval_mode="yolo")
        executor = LocalExecutor(work)
        toolbox = Toolbox(executor, "yolo", shell_timeout=30, output_limit=settings.tool_output_limit)
        model = OpenAIModel(server.url, model="scripted", max_retries=0, log=lambda m: None)
        agent = Agent(model, toolbox, system_prompt(work, "local machine", []), settings, log=lambda m: None)
        start = time.monotonic()
        result = agent.run(TASK)
        wall = time.monotonic() - start
        sizes = [len(render_prompt(r["messages"], r.get("tools")).encode()) for r in server.requests]
        summaries = sum(r["messages"][0]["content"] == SUMMARY_PROMPT for r in server.requests)
    own = wall - result.model_seconds - result.tool_seconds
    return {
        "termination": result.termination_reason,
        "rounds": result.rounds,
        "prompt_tokens": sum(sizes),
        "max_request": max(sizes),
        "over_limit": sum(s > tokens_limit for s in sizes),
        "summaries": summaries,
        "agent_ms_per_turn": round(1000 * own / max(1, result.rounds), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--turns", type=int, default=60)
    ap.add_argument("--tokens-limit", type=int, default=16000)
    ap.add_argument("--output-tokens", type=int, default=2000)
    args = ap.parse_args()
    on = run(args.turns, args.output_tokens, args.tokens_limit)
    off = run(args.turns, args.output_tokens, 10**9)
    ratio = on["prompt_tokens"] / off["prompt_tokens"]
    print(f"with compression (tokensLimit {args.tokens_limit}): {on}")
    print(f"without compression:                    {off}")
    ok = ratio <= 0.5 and on["over_limit"] == 0 and on["termination"] == off["termination"] == "finished"
    print(
        json.dumps(
            {
                "bench": "iflow_compression",
                "ratio": round(ratio, 4),
                "target": 0.5,
                "ok": ok,
                "turns": args.turns,
                "tokens_limit": args.tokens_limit,
                "prompt_tokens_compressed": on["prompt_tokens"],
                "prompt_tokens_uncompressed": off["prompt_tokens"],
                "max_request_tokens": on["max_request"],
                "requests_over_limit": on["over_limit"],
                "summarisations": on["summaries"],
                "agent_ms_per_turn": on["agent_ms_per_turn"],
                "agent_ms_per_turn_uncompressed": off["agent_ms_per_turn"],
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
