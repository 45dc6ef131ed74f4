"""Error and decision-boundary masks: `.venv/bin/pytest tests/roll/test_sft_data.py -k mask`.

Masking is clearing `loss_mask` positions of a `PackedSequence`: the tokens stay in the context (the recovery
after a failed call must see the failure), only their loss goes. Which chunks to clear is read from the
trajectory:
- error masking: chunks whose tool call did not parse or failed to run (`traj.tool_results`, `parsed` or `ok`
  False, tied by `chunk_index`), and replies that hold a `<tool_call>` block nothing parses or nothing at all;
- duplicate rounds: a chunk whose every call repeats (normalised: JSON key order, spacing, `./`, the shell's
  `description`) a call made since the last call that could have changed the sandbox, except a repeat that
  now succeeds where the earlier one failed (a retry that worked is a recovery, not a loop);
- replaced history: the chunks before the last place the agent's context compression rewrote the prompt
  (optional; each chunk's loss is in exactly one sequence either way, see `pack_trajectory`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable

import torch

from rock.contracts import Chunk, Trajectory
from roll.algo.packing import PackedSequence
from roll.sft.render import canonical_arguments
from rome.tokenizer.chat import TOOL_CALL_END, TOOL_CALL_START, parse_tool_calls

READ_ONLY_TOOLS = {"read_file", "read_many_files", "list_directory", "glob", "search_file_content"}
# Shell programs that only look (without a redirect): repeating one with nothing changed in between is redundant.
READ_ONLY_COMMANDS = {
    "ls", "cat", "head", "tail", "grep", "egrep", "find", "wc", "pwd", "stat", "file", "echo", "printf", "which",
    "type", "diff", "cmp", "tree", "du", "df", "ps", "pgrep", "id", "whoami", "date", "env", "printenv", "sort",
    "uniq", "cut", "tr", "less", "more", "md5sum", "sha256sum", "realpath", "basename", "dirname", "test", "[",
}  # fmt: skip
IGNORED_ARGS = {"description"}  # iflow's note on what a command does: not part of what it does
PATH_ARGS = {"path", "directory", "file_path", "absolute_path", "dir_path"}
HARMLESS_REDIRECT = re.compile(r"\d*>&\d|\d*>\s*/dev/null")


@dataclasses.dataclass(frozen=True)
class Call:
    name: str
    arguments: str  # JSON text as the model wrote it
    call_id: str | None


def chunk_calls(chunk: Chunk) -> list[Call]:
    """The tool calls a reply made: native ones, or `<tool_call>` blocks in the text (iflow's text mode)."""
    if chunk.response.tool_calls:
        return [
            Call(str(c.function.get("name", "")), canonical_arguments(c.function.get("arguments", "")), c.id)
            for c in chunk.response.tool_calls
        ]
    _, calls = parse_tool_calls(chunk.response.text or "")
    return [Call(c["function"]["name"], c["function"]["arguments"], None) for c in calls]


def unparsed_reply(chunk: Chunk) -> bool:
    """A reply the agent could not read as anything: a `<tool_call>` block that does not parse (or is not
    closed), or neither text nor a call."""
    text = chunk.response.text or ""
    if chunk.response.tool_calls:
        return False
    if TOOL_CALL_START in text:
        return text.count(TOOL_CALL_END) < text.count(TOOL_CALL_START) or not parse_tool_calls(text)[1]
    return not text.strip()


def failed_chunks(traj: Trajectory) -> set[int]:
    """Chunk indices whose tool call failed to parse or to execute."""
    failed = {r.chunk_index for r in traj.tool_results if r.chunk_index is not None and not (r.parsed and r.ok)}
    return failed | {c.index for c in traj.chunks if c.error is None and unparsed_reply(c)}


def normalise(value):
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k not in IGNORED_ARGS and v is not None}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def signature(call: Call) -> str:
    """The call with what does not change its effect taken out, as one comparable string."""
    try:
        args = json.loads(call.arguments)
    except ValueError:
        return f"{call.name} {' '.join(call.arguments.split())}"
    if not isinstance(args, dict):
        return f"{call.name} {normalise(args)!r}"
    args = normalise(args)
    for key in PATH_ARGS & args.keys():
        if isinstance(args[key], str):
            path = args[key].removeprefix("./")
            args[key] = path.rstrip("/") if len(path) > 1 else (path or ".")
    return f"{call.name} {json.dumps(args, sort_keys=True, ensure_ascii=False)}"


def changes_state(call: Call) -> bool:
    """Whether the call could have changed the sandbox (so a later repeat may see something new)."""
    if call.name in READ_ONLY_TOOLS:
        return False
    if call.name != "run_shell_command":
        return True
    try:
        command = json.loads(call.arguments).get("command", "")
    except (ValueError, AttributeError):
        return False  # it did not run
    command = HARMLESS_REDIRECT.sub(" ", str(command))
    if ">" in command or "`" in command or "$(" in command or "-i" in command.split():
        return True
    words = [segment.split()[:1] for segment in re.split(r"&&|\|\||[;|\n]", command)]
    return not all(w and w[0] in READ_ONLY_COMMANDS for w in words)


def outcomes(traj: Trajectory, chunk: Chunk, calls: list[Call]) -> list[bool]:
    """Whether each call of the chunk succeeded (by call id, else in order; no record: assume it did)."""
    results = [r for r in traj.tool_results if r.chunk_index == chunk.index]
    by_id = {r.call_id: r.ok and r.parsed for r in results if r.call_id}
    out = []
    for i, call in enumerate(calls):
        if call.call_id in by_id:
            out.append(by_id[call.call_id])
        else:
            out.append(results[i].ok and results[i].parsed if i < len(results) else True)
    return out


def duplicate_chunks(traj: Trajectory) -> set[int]:
    """Chunk indices of redundant rounds: every call repeats one made since the last state change."""
    seen: dict[str, bool] = {}  # signature -> whether it succeeded, since the last call that changed state
    duplicates = set()
    for chunk in sorted(traj.chunks, key=lambda c: c.index):
        calls = chunk_calls(chunk) if chunk.error is None else []
        if not calls:
            continue
        ok = outcomes(traj, chunk, calls)
        sigs = [signature(c) for c in calls]
        if all(s in seen and not (ok[i] and not seen[s]) for i, s in enumerate(sigs)):
            duplicates.add(chunk.index)
        for call, sig, good in zip(calls, sigs, ok, strict=True):
            if good and changes_state(call):
                seen.clear()
            seen[sig] = good
    return duplicates


def restarts(chunks: list[Chunk]) -> list[int]:
    """Indices of rendered chunks whose prompt does not extend the previous prompt + reply: where the agent's
    context compression (or its summary call) rewrote the history, and `pack_trajectory` starts a new sequence."""
    out, previous = [], None
    for chunk in chunks:
        prompt = chunk.prompt_token_ids or []
        if previous is not None and prompt[: len(previous)] != previous:
            out.append(chunk.index)
        previous = prompt + (chunk.response_token_ids or [])
    return out


def replaced_history_chunks(chunks: list[Chunk]) -> set[int]:
    """The rendered chunks before the last restart: the history a compression replaced."""
    points = restarts(chunks)
    return {c.index for c in chunks if points and c.index < points[-1]}


def mask_chunks(seq: PackedSequence, indices: Iterable[int]) -> PackedSequence:
    """A copy of `seq` with no loss on the response tokens of the chunks whose `Chunk.index` is in `indices`."""
    drop = set(indices)
    local = [i for i, index in enumerate(seq.chunk_indices) if index in drop]
    if not local:
        return seq
    hit = torch.isin(seq.chunk_ids, torch.tensor(local, dtype=torch.long))
    return dataclasses.replace(seq, loss_mask=seq.loss_mask & ~hit)


def trained_chunks(seq: PackedSequence) -> set[int]:
    """The `Chunk.index` of every chunk with loss left in `seq`."""
    ids = seq.chunk_ids[seq.loss_mask].unique().tolist()
    return {seq.chunk_indices[i] for i in ids}
