"""Packed trajectories vs one row per chunk: `.venv/bin/python bench/bench_packing.py [--trajectories 4] [--quick]`.

Multi-turn iflow-like trajectories rendered with ROME's real chat template (ROME-tiny from `rome init`):
iflow's system prompt and its seven tool schemas (the fixed prefix every call starts with), a task, then 4-6
turns of an assistant tool call and a plain-text tool result; each turn's prompt is the whole conversation so far,
as the agent sends it, and the response is the call in ROME's tool-call format (with --data: trajectories a
`roll data synth` run recorded). The same trajectories train in one run two ways with `SupervisedTrainer`: one
row per chunk (`pack_trajectory(pack=False)`, every prefix recomputed), and packed (`pack_trajectory`: one
sequence per trajectory, loss on each response; the system prefix shared by the trajectories computed once).
Arms alternate round by round and each arm's fastest round counts. Prints a JSON line; `ratio` = packed ÷ rows
in loss-bearing tokens trained per second (target >= 3.0); without --quick also `ratio_pack_only` (packing
without the shared prefix).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path


def conversation_chunks(tokenizer, trajectory: int, rng: random.Random) -> list:
    """The chunks (model calls) of one rendered multi-turn trajectory."""
    from iflow_cli.prompts import system_prompt
    from iflow_cli.tools import SCHEMAS
    from rock.contracts import Chunk

    tools = list(SCHEMAS.values())
    word = rng.choice(["heron", "maple", "quartz", "otter", "cobalt", "lilac", "ember", "fjord"])
    messages = [
        {"role": "system", "content": system_prompt("/app", "ROCK sandbox sb-bench", [])},
        {"role": "user", "content": f"Find the config under /app/{word} and set retries to {rng.randint(2, 9)}."},
    ]
    chunks = []
    for turn in range(rng.randint(4, 6)):
        call = rng.choice([
            ("run_shell_command", {"command": f"ls -la /app/{word}/{'conf' if turn else ''}"}),
            ("read_file", {"absolute_path": f"/app/{word}/conf/settings-{turn}.ini"}),
            ("search_file_content", {"pattern": "retries", "path": f"/app/{word}"}),
        ])  # fmt: skip
        reply = {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{trajectory}_{turn}", "type": "function",
             "function": {"name": call[0], "arguments": json.dumps(call[1])}}]}  # fmt: skip
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        prompt = tokenizer.encode(text, add_special_tokens=False)
        head = "<|im_start|>assistant\n"
        response_text = tokenizer.apply_chat_template([reply], tokenize=False)[len(head) :].removesuffix("\n")
        response = tokenizer.encode(response_text, add_special_tokens=False)
        chunks.append(
            Chunk(trajectory_id=f"traj-{trajectory}", sandbox_id="sb", index=turn, prompt_token_ids=prompt,
                  response_token_ids=response, response_logprobs=[-1.0] * len(response), latency_s=0.0,
                  created_at=0.0)
        )  # fmt: skip
        result = tool_output(rng, word, turn)
        messages += [reply, {"role": "tool", "tool_call_id": f"call_{trajectory}_{turn}", "content": result}]
    return chunks


def tool_output(rng: random.Random, word: str, turn: int) -> str:
    """A tool result as iflow returns them: plain text, mostly short (the suite's synthesised data: median 54
    tokens a turn, mean 84), now and then a listing or a file's lines."""
    kind = rng.choice(["created", "listing", "content", "search"])
    if kind == "created":
        return f"Created /app/{word}/conf/settings-{turn}.ini ({rng.randint(5, 400)} bytes)"
    if kind == "listing":
        names = rng.sample(["settings.ini", "defaults.ini", "local.ini", "notes.txt", "README.md", "run.sh"], 4)
        return "\n".join(f"-rw-r--r-- 1 root root {rng.randint(10, 9999):>5} {n}" for n in names)
    if kind == "content":
        keys = rng.sample(["retries", "timeout", "workers", "log_level", "port", "mode"], rng.randint(3, 5))
        return "[main]\n" + "\n".join(f"{k} = {rng.randint(1, 99)}" for k in keys)
    return f"/app/{word}/conf/settings.ini:{rng.randint(1, 40)}:retries = {rng.randint(1, 9)}"


def real_trajectories(path: Path, n: int) -> list[list]:
    """The first n trajectories of a `roll data synth` all.jsonl with 4 or more chunks carrying token ids."""
    from rock.contracts import Trajectory
    from roll.algo.packing import untrainable_reason

    out = []
    for line in path.read_text().splitlines():
        chunks = Trajectory.model_validate_json(line).chunks
        if len(chunks) >= 4 and not any(untrainable_reason(c) for c in chunks):
            out.append(chunks)
        if len(out) == n:
            break
    return out


class Arm:
    """One way of training the data: its own trainer; `round()` trains all its sequences in one optimizer step."""

    def __init__(self, model_dir: Path, out: Path, sequences: list, shared_prefix: bool):
        from roll.trainer import SupervisedTrainer, TrainerConfig

        cfg = TrainerConfig(batch_sequences=len(sequences), micro_batch_tokens=4096, lr=1e-3, schedule="constant",
                            shared_prefix=shared_prefix, progress=False)  # fmt: skip
        self.trainer, self.sequences, self.seconds, self.loss_tokens = (
            SupervisedTrainer(model_dir, cfg, out),
            sequences,
            [],
            0,
        )

    def round(self) -> None:
        class All:
            def next_batch(self, n):
                return list(range(n))

            def state_dict(self):
                return {}

        t = time.perf_counter()
        self.loss_tokens = self.trainer.fit(self.sequences, steps=1, sampler=All())["tokens"]
        self.seconds.append(time.perf_counter() - t)

    def report(self) -> dict:
        best = min(self.seconds)
        return {"seconds": [round(x, 2) for x in self.seconds], "loss_tokens": self.loss_tokens,
                "loss_tokens_per_s": round(self.loss_tokens / best, 2), "sequences": len(self.sequences),
                "sequence_tokens": sum(len(s) for s in self.sequences)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="rounds; each arm trains all its data once a round")
    ap.add_argument("--quick", action="store_true", help="2 trajectories, 2 rounds, no pack-only arm")
    ap.add_argument("--data", type=Path, help="a `roll data synth` all.jsonl: its recorded trajectories instead")
    args = ap.parse_args()
    n, rounds = (2, 2) if args.quick else (args.trajectories, args.rounds)
    from roll.algo.packing import pack_trajectory
    from roll.data.teacher import load_tokenizer
    from rome.init import init_model

    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        model_dir = init_model(Path(tmp) / "rome-tiny", "tiny")
        tokenizer = load_tokenizer(model_dir)
        rng = random.Random(0)
        if args.data:
            trajectories = real_trajectories(args.data, n)
            if len(trajectories) < n:
                raise SystemExit(
                    f"{args.data}: {len(trajectories)} trajectories of 4+ chunks with token ids, {n} asked"
                )
        else:
            trajectories = [conversation_chunks(tokenizer, t, rng) for t in range(n)]
        packed = [s for chunks in trajectories for s in pack_trajectory(chunks)]
        rows = [s for chunks in trajectories for s in pack_trajectory(chunks, pack=False)]
        if len(packed) != n:
            raise SystemExit(f"prompts did not extend each other: {len(packed)} sequences for {n} trajectories")
        arms = {"rows": Arm(model_dir, Path(tmp) / "rows", rows, False),
                "packed": Arm(model_dir, Path(tmp) / "packed", packed, True)}  # fmt: skip
        if not args.quick:
            arms["pack_only"] = Arm(model_dir, Path(tmp) / "pack-only", packed, False)
        # Rounds interleave the arms, and each arm's fastest round counts: load from other processes on the
        # shared machine drifts over minutes and would otherwise favour whichever arm ran in a quiet spell.
        for _ in range(rounds):
            for arm in arms.values():
                arm.round()
        reports = {name: arm.report() for name, arm in arms.items()}
    assert reports["rows"]["loss_tokens"] == reports["packed"]["loss_tokens"], "the arms trained different tokens"
    result = {
        "bench": "packing",
        "model": "rome-tiny",
        "data": str(args.data) if args.data else "rendered",
        "trajectories": n,
        "turns": [len(t) for t in trajectories],
        "first_prompt_tokens": min(len(t[0].prompt_token_ids) for t in trajectories),
        "rounds": rounds,
        **{f"{arm}_{k}": v for arm, r in reports.items() for k, v in r.items()},
    }
    rows_tps = reports["rows"]["loss_tokens_per_s"]
    if "pack_only" in reports:
        result["ratio_pack_only"] = round(reports["pack_only"]["loss_tokens_per_s"] / rows_tps, 2)
    result["ratio"] = round(reports["packed"]["loss_tokens_per_s"] / rows_tps, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
