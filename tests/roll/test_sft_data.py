"""CPT/SFT data: loaders, masks, phase-1 filters, the CPT mix, the adaptive sampler:
`.venv/bin/pytest tests/roll/test_sft_data.py`.

Hand-built trajectories (iflow-shaped requests, the oracle's kind of mistakes) rendered with ROME-tiny's tokenizer.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from iflow_cli.tools import SCHEMAS
from rock.contracts import Chunk, ChunkResponse, ToolCall, ToolResult, Trajectory
from roll.algo.packing import pack_trajectory, pad_sequences
from roll.data.teacher import load_tokenizer
from roll.errors import ConfigError
from roll.sft import (
    AdaptiveSampler,
    CptDataConfig,
    DataError,
    NoVerifiedDataError,
    SftDataConfig,
    cpt_dataset,
    load_trajectories,
    render_trajectory,
    sft_dataset,
    sft_sequences,
)
from roll.sft.masks import duplicate_chunks, failed_chunks, mask_chunks, restarts, trained_chunks


def traj(tid: str, status: str = "resolved", family: str = "f") -> Trajectory:
    return Trajectory(trajectory_id=tid, task_id=tid, family=family, split="train",
                      reward=float(status == "resolved"), status=status)  # fmt: skip


def test_load_trajectories_from_a_file_or_a_synth_dir_and_verified_only(tmp_path):
    rows = [traj("a"), traj("b", "unresolved"), traj("c")]
    (tmp_path / "all.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in rows) + "\n")
    assert [t.trajectory_id for t in load_trajectories(tmp_path / "all.jsonl")] == ["a", "b", "c"]
    assert [t.trajectory_id for t in load_trajectories(tmp_path, verified=True)] == ["a", "c"]  # no verified.jsonl
    (tmp_path / "verified.jsonl").write_text(rows[0].model_dump_json() + "\n")
    assert [t.trajectory_id for t in load_trajectories(tmp_path, verified=True)] == ["a"]
    assert len(load_trajectories(tmp_path)) == 3


def test_a_dataset_without_verified_trajectories_is_one_line(tmp_path):
    (tmp_path / "all.jsonl").write_text(traj("b", "unresolved").model_dump_json() + "\n")
    (tmp_path / "verified.jsonl").write_text("")
    with pytest.raises(NoVerifiedDataError) as e:
        load_trajectories(tmp_path, verified=True)
    assert "no verified trajectories" in str(e.value) and "\n" not in str(e.value)
    assert load_trajectories(tmp_path / "all.jsonl")  # CPT takes failures too


@pytest.mark.parametrize(
    "content,message",
    [(None, "no such dataset file"), ('{"trajectory_id": "x"}\n', "all.jsonl:1: not a Trajectory"),
     ("not json\n", "all.jsonl:1: not a Trajectory")],
)  # fmt: skip
def test_bad_datasets_are_named(tmp_path, content, message):
    if content is not None:
        (tmp_path / "all.jsonl").write_text(content)
    with pytest.raises(DataError, match=message) as e:
        load_trajectories(tmp_path / "all.jsonl")
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no all.jsonl or verified.jsonl in this folder"):
        load_trajectories(tmp_path / "empty")


# -- hand-built iflow trajectories ------------------------------------------------------------------------------

TOOLS = list(SCHEMAS.values())
SYSTEM = {"role": "system", "content": "You are iFlow, a coding agent working in a terminal."}
OK, FAIL, UNPARSED = (True, True, 0), (True, False, 1), (False, False, None)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from rome.init import init_model

    return load_tokenizer(init_model(tmp_path_factory.mktemp("rome") / "tiny", "tiny"))


def step(tool: str, args: dict | str, outcome=OK, native: bool = True) -> dict:
    """One agent turn: a call (args as a dict, or raw text of a call that does not parse) and how it went."""
    return {"tool": tool, "args": args, "outcome": outcome, "native": native and isinstance(args, dict)}


def build(tid: str, steps: list[dict], status: str = "resolved", family: str = "f", answer: str = "Done.",
          task: str = "Write hello to a.txt") -> Trajectory:  # fmt: skip
    """The chunks, messages and tool_results iflow and the gateway record for these turns, then a final answer."""
    history = [SYSTEM, {"role": "user", "content": task}]
    chunks, results = [], []
    for i, s in enumerate([*steps, None]):
        if s is None:
            response, message = ChunkResponse(text=answer), {"role": "assistant", "content": answer}
        elif s["native"]:
            call = ToolCall(id=f"c{i}", function={"name": s["tool"], "arguments": json.dumps(s["args"])})
            response = ChunkResponse(tool_calls=[call])
            message = {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}
        else:
            raw = f'<tool_call>\n{{"name": "{s["tool"]}", "arguments": {s["args"]}}}\n</tool_call>'
            response, message = ChunkResponse(text=raw), {"role": "assistant", "content": raw}
        chunks.append(Chunk(trajectory_id=tid, sandbox_id="s", index=i, messages=list(history), tools=TOOLS,
                            response=response, latency_s=0.0, created_at=0.0))  # fmt: skip
        if s is None:
            break
        parsed, ok, code = s["outcome"]
        cid = f"c{i}" if s["native"] else None
        results.append(ToolResult(chunk_index=i, call_id=cid, tool=s["tool"], parsed=parsed, ok=ok, exit_code=code,
                                  error="" if ok else "it failed"))  # fmt: skip
        history = history + [message, {"role": "tool", "tool_call_id": cid or "x", "content": f"result {i}"}]
    return Trajectory(trajectory_id=tid, task_id=tid, family=family, split="train", reward=float(status == "resolved"),
                      status=status, chunks=chunks, tool_results=results)  # fmt: skip


def response_positions(seq, index: int) -> int:
    local = seq.chunk_indices.index(index)
    return int((seq.chunk_ids == local).sum())


def shell(command: str, outcome=OK) -> dict:
    return step("run_shell_command", {"command": command}, outcome)


RECOVERY = [
    step("list_directory", {"path": "."}),
    shell("gerp -c x a.txt", FAIL),  # a typo: command not found
    shell("grep -c x a.txt"),
    step("write_file", '{"path": "a.txt"', UNPARSED),  # JSON cut short
    step("write_file", {"path": "a.txt", "content": "hello\n"}),
]


def test_error_masking_clears_exactly_the_failed_chunks_response_positions(tok):
    traj = build("t", RECOVERY)
    assert failed_chunks(traj) == {1, 3}
    (seq,) = pack_trajectory(render_trajectory(traj, tok))
    masked = mask_chunks(seq, failed_chunks(traj))
    cleared = seq.loss_mask & ~masked.loss_mask
    local = torch.tensor([seq.chunk_indices.index(1), seq.chunk_indices.index(3)])
    assert torch.equal(cleared, torch.isin(seq.chunk_ids, local) & seq.loss_mask)
    assert int(cleared.sum()) == response_positions(seq, 1) + response_positions(seq, 3) > 0
    for index in (0, 2, 4, 5):  # the recovery and everything else keep their loss
        local = seq.chunk_indices.index(index)
        assert bool(masked.loss_mask[seq.chunk_ids == local].all())
    on = sft_dataset([traj], tok, SftDataConfig())
    off = sft_dataset([traj], tok, SftDataConfig(mask_errors=False, filters=["tests_failed"]))
    assert on.report.masked_chunks["errors"] == 2
    assert off.report.loss_tokens - on.report.loss_tokens == int(cleared.sum())


def test_duplicate_rounds_are_masked_unless_something_changed_or_a_failed_call_now_works(tok):
    traj = build("t", [
        step("read_file", {"path": "a.txt"}),
        step("read_file", {"path": "./a.txt"}),  # 1: the same read, normalised: redundant
        shell("cat  b.txt", FAIL),
        shell("cat b.txt", FAIL),  # 3: the same failure again: a loop
        shell("cat b.txt"),  # 4: now it works: a recovery, kept
        shell("mkdir -p out", OK),
        shell("mkdir -p out", OK),  # 6: the same change twice
        step("write_file", {"path": "a.txt", "content": "x"}),
        step("read_file", {"path": "a.txt"}),  # 8: after a write the same read sees something new: kept
        shell("ls -la", OK),
        shell("ls -la", OK, ),  # 10: nothing changed since
    ])  # fmt: skip
    assert duplicate_chunks(traj) == {1, 3, 6, 10}
    data = sft_dataset([traj], tok, SftDataConfig(mask_errors=False, filters=[]))
    (seq,) = data.sequences
    assert trained_chunks(seq) == set(range(12)) - {1, 3, 6, 10}
    assert data.report.masked_chunks["duplicates"] == 4


def compressed_trajectory() -> Trajectory:
    """Four turns, then iflow's compression: a state note replaces turns 0-1, turn 2 is kept verbatim."""
    traj = build("t", [shell("ls"), shell("cat a.txt"), shell("echo hi > b.txt"), shell("cat b.txt")])
    chunks = list(traj.chunks)
    head, kept = chunks[3].messages[:2], chunks[3].messages[-2:]  # system + task; turn 2's call and result
    note = {"role": "user", "content": "[State note: earlier turns were compressed]\nwrote b.txt"}
    cut = len(chunks[3].messages)
    for c in chunks[3:]:
        c.messages = head + [note] + kept + c.messages[cut:]
    return traj


def test_compressed_history_restarts_the_sequence_and_no_reply_carries_loss_twice(tok):
    traj = compressed_trajectory()
    rendered = render_trajectory(traj, tok)
    assert restarts(rendered) == [3]
    data = sft_dataset([traj], tok, SftDataConfig())
    first, second = data.sequences
    assert first.chunk_indices == [0, 1, 2] and second.chunk_indices == [3, 4]
    # turn 2's reply is in the second sequence's prompt, without loss: every reply is trained exactly once
    assert data.report.loss_tokens == sum(len(c.response_token_ids) for c in rendered)
    assert trained_chunks(first) | trained_chunks(second) == {0, 1, 2, 3, 4}
    masked = sft_dataset([traj], tok, SftDataConfig(mask_replaced_history=True))
    assert [trained_chunks(s) for s in masked.sequences] == [{3, 4}]
    assert masked.report.masked_chunks["replaced_history"] == 3


def test_phase_one_drops_exactly_the_bad_trajectories_and_counts_the_reasons(tok):
    clean, recovered = build("clean", [shell("ls"), RECOVERY[-1]]), build("recovered", RECOVERY)
    bad = [
        build("failed", [shell("ls")], status="unresolved"),
        build("unknown", [step("delete_everything", {"path": "/"}, UNPARSED)]),
        build("pysyntax", [step("write_file", {"path": "m.py", "content": "def f(:\n  pass\n"})]),
        build("shsyntax", [shell("if then fi (", (True, False, 2))]),
        build("unparsed", [step("write_file", '{"path": "a.txt"', UNPARSED)]),
    ]
    fine_py = build("fine_py", [step("write_file", {"path": "m.py", "content": "def f():\n    return 1\n"})])
    data = [clean, recovered, *bad, fine_py]
    no_masks = sft_dataset(data, tok, SftDataConfig(mask_errors=False))
    assert [s.trajectory_id for s in no_masks.sequences] == ["clean", "fine_py"]
    assert no_masks.report.dropped == {"python_syntax": 1, "shell_syntax": 1, "tests_failed": 1, "unknown_tool": 1,
                                       "unparsed_call": 2}  # fmt: skip
    # With error masking the bad calls carry no loss, so they teach nothing wrong: only what is trained is judged
    masked = sft_dataset(data, tok, SftDataConfig())
    assert masked.report.dropped == {"python_syntax": 1, "tests_failed": 1} and masked.report.kept == 6
    assert masked.families == ["f"] * 6
    with pytest.raises(DataError, match="phase 1 kept none"):
        sft_dataset(bad[2:3], tok)
    with pytest.raises(NoVerifiedDataError):
        sft_dataset(bad[:1], "/nonexistent/model dir: never loaded")
    with pytest.raises(ConfigError, match="phase must be 1 or 2"):
        sft_sequences([clean], tok, phase=3)
    assert len(sft_sequences([clean], tok, phase=2)) == len(sft_sequences([clean], tok, phase=1)) == 1


def test_shell_syntax_checked_concurrently_agrees_with_bash_n_one_at_a_time():
    from roll.sft.filters import bash_syntax_ok, check_shell_syntax

    good = [f"echo 'line {i}' >> /app/f{i}.txt && ls -la /app" for i in range(24)]
    broken = ["if then fi (", "echo 'unclosed", "for x in; do", "ls || |"]
    trajs = [build(f"t{i}", [shell(c), shell(c)]) for i, c in enumerate(good + broken)]
    trajs.append(build("py", [step("write_file", {"path": "m.py", "content": "x"})]))  # no shell command
    bash_syntax_ok.cache_clear()
    assert check_shell_syntax(trajs, workers=4) == len(good) + len(broken)  # distinct commands, each once
    assert bash_syntax_ok.cache_info().currsize == len(good) + len(broken)
    concurrent = [bash_syntax_ok(c) for c in good + broken]
    bash_syntax_ok.cache_clear()  # the same verdicts, one `bash -n` at a time
    assert concurrent == [bash_syntax_ok(c) for c in good + broken] == [True] * len(good) + [False] * len(broken)


def test_cpt_mix_holds_every_trajectory_and_short_context_examples(tok):
    trajs = [build("a", RECOVERY), build("b", [shell("ls")], status="unresolved", family="g"),
             build("c", [shell("ls")], status="unresolved", family="g")]  # fmt: skip
    data = cpt_dataset(trajs, tok, CptDataConfig(task_call=2))
    assert data.report.sequences == {"full": 3, "task_call": 6, "result_call": 5 + 1 + 1}
    full = [s for s in data.sequences if "~" not in s.trajectory_id]
    assert {s.trajectory_id for s in full} == {"a", "b", "c"}  # failures included
    task = next(s for s in data.sequences if s.trajectory_id == "a~task_call")
    text = tok.decode(task.input_ids)
    assert text.startswith("<|im_start|>user\nWrite hello to a.txt<|im_end|>\n<|im_start|>assistant\n<tool_call>")
    assert "<tools>" not in text and "iFlow" not in text and len(task) * 5 < len(full[0])
    assert tok.decode(task.input_ids[1:][task.loss_mask]).startswith("<tool_call>")  # loss on the reply only
    result = next(s for s in data.sequences if s.trajectory_id.startswith("a~result_call") and s.chunk_indices == [2])
    assert "result 1" in tok.decode(result.input_ids) and "<tools>" not in tok.decode(result.input_ids)
    pad_sequences(data.sequences)  # copies have their own ids: no chunk counts twice in a batch
    assert data.families.count("g") == 2 * (1 + 2 + 1)
    short_only = cpt_dataset(trajs, tok, CptDataConfig(full=0, result_call=0, order="short_first"))
    assert short_only.report.sequences == {"task_call": 3}
    first = cpt_dataset(trajs, tok, CptDataConfig(order="short_first")).sequences
    assert all("~" in s.trajectory_id for s in first[:10]) and all("~" not in s.trajectory_id for s in first[10:])
    assert cpt_dataset(trajs, tok, CptDataConfig(per_behaviour=1)).report.selected == 2  # b and c behave alike
    acting = cpt_dataset(trajs[:1], tok, CptDataConfig(full=0, result_call=0, task_call_to="first_change"))
    (first_change,) = acting.sequences  # the looks, the failed typo and the read are skipped: the write it made
    assert first_change.chunk_indices == [4] and '"name": "write_file"' in tok.decode(first_change.input_ids)
    everything = cpt_dataset(trajs[:1], tok, CptDataConfig(loss_on="all", task_call=0, result_call=0)).sequences[0]
    assert bool(everything.loss_mask.all())


def test_cpt_dialogue_is_the_whole_trajectory_without_the_prefix(tok):
    trajs = [build("a", RECOVERY), build("b", [shell("ls")], status="unresolved", family="g")]
    only = dict(full=0, task_call=0, result_call=0)
    data = cpt_dataset(trajs, tok, CptDataConfig(dialogue=2, **only))
    assert data.report.sequences == {"dialogue": 4}
    full = cpt_dataset(trajs, tok, CptDataConfig(**(only | {"full": 1}))).sequences
    for seq in data.sequences:
        whole = next(f for f in full if seq.trajectory_id.startswith(f.trajectory_id + "~dialogue#"))
        text = tok.decode(seq.input_ids)
        assert text.startswith("<|im_start|>user\n") and "<tools>" not in text and len(seq) * 2 < len(whole)
        # the same replies carry the loss, on every turn of the packed sequence
        assert seq.chunk_indices == whole.chunk_indices
        assert tok.decode(seq.input_ids[1:][seq.loss_mask]) == tok.decode(whole.input_ids[1:][whole.loss_mask])
    pad_sequences(data.sequences)  # the two copies have their own ids
    half = cpt_dataset(trajs * 20, tok, CptDataConfig(dialogue=0.5, **only)).report.sequences["dialogue"]
    assert 8 <= half <= 32


# -- phase 2 -----------------------------------------------------------------------------------------------------


def draw_counts(sampler: AdaptiveSampler, batches: int, n: int = 1) -> Counter:
    return Counter(i for _ in range(batches) for i in sampler.next_batch(n))


def test_sampler_balances_families_whatever_their_size():
    families = ["big"] * 30 + ["mid"] * 5 + ["one"]
    counts = draw_counts(AdaptiveSampler(36, families, seed=1), 3000)
    by_family = Counter()
    for i, c in counts.items():
        by_family[families[i]] += c
    assert all(900 < by_family[f] < 1100 for f in ("big", "mid", "one")), by_family


def test_sampler_favours_low_pass_rates_and_high_losses_within_bounds():
    families = ["easy"] * 4 + ["hard"] * 4
    sampler = AdaptiveSampler(8, families, pass_rates={"easy": 1.0, "hard": 0.0}, seed=2)
    shares = sampler.family_weights()
    assert shares["hard"] == pytest.approx(3 * shares["easy"])  # 1 + 2 * (1 - pass rate)
    capped = AdaptiveSampler(8, families, pass_rates={"easy": 1.0, "hard": 0.0}, pass_boost=10, max_family_ratio=4)
    assert capped.family_weights()["hard"] == pytest.approx(4 * capped.family_weights()["easy"])
    sampler.update([0, 1, 2, 3], [4.0, 1.0, 1.0, 1.0])
    p = sampler.probabilities()
    assert p[0] == pytest.approx(4 * p[1]) and sum(p) == pytest.approx(1.0)
    counts = draw_counts(sampler, 4000)
    assert counts[0] > 3 * counts[1] and sum(counts[i] for i in range(4, 8)) > 2.5 * sum(counts[i] for i in range(4))
    fresh = AdaptiveSampler(3, ["f"] * 3, losses=[0.5, None, 2.0])
    assert fresh.probabilities()[1] == fresh.probabilities()[2]  # not trained yet: weighs as the highest loss


def test_sampler_is_deterministic_and_restores_its_state():
    families = [f"f{i % 3}" for i in range(12)]
    a, b = AdaptiveSampler(12, families, seed=7), AdaptiveSampler(12, families, seed=7)
    for _ in range(5):
        batch = a.next_batch(4)
        assert batch == b.next_batch(4) and len(set(batch)) == 4
        a.update(batch, [1.0, 2.0, 3.0, 4.0])
        b.update(batch, [1.0, 2.0, 3.0, 4.0])
    state = json.loads(json.dumps(a.state_dict()))  # the trainer's checkpoint holds it as JSON
    c = AdaptiveSampler(12, families, seed=0)
    c.load_state_dict(state)
    assert [c.next_batch(4) for _ in range(3)] == [a.next_batch(4) for _ in range(3)]
    assert sorted(AdaptiveSampler(12, families).next_batch(50)) == list(range(12))
    assert AdaptiveSampler(12, families, seed=8).next_batch(4) != AdaptiveSampler(12, families, seed=7).next_batch(4)
    with pytest.raises(ValueError, match="dataset changed"):
        AdaptiveSampler(11, families[:11]).load_state_dict(state)
    with pytest.raises(ValueError, match="pass rates must be in"):
        AdaptiveSampler(12, families, pass_rates={"f0": 1.5})
