"""CPT/SFT data: loaders, masks, phase-1 filters, the CPT mix, the adaptive sampler:
`.venv/bin/pytest tests/roll/test_sft_data.py`.

Hand-built trajectories (iflow-shaped requests, the oracle's kind of mistakes) rendered with ROME-tiny's tokenizer.
"""

from __future__ import annotations

import pytest

from rock.contracts import Trajectory
from roll.sft import DataError, NoVerifiedDataError, load_trajectories


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
