"""`roll cpt` and `roll sft`: `.venv/bin/pytest tests/roll/test_stages.py` (the learning run itself is
`make train-sft`, not a test).

Four real oracle trajectories of the suite (tests/fixtures/stages, token ids stripped: the stages re-render
from the messages), ROME-tiny from `rome init`, the real DeepSpeed trainer; evaluation off where a test is
about training (it needs vLLM and sandboxes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rock.contracts import Trajectory
from roll.cli import main
from roll.config import load_config
from roll.errors import ConfigError
from roll.stages.config import CptConfig, SftConfig
from roll.stages.data import dataset_dir, inputs, ready

FIXTURE = Path(__file__).parent.parent / "fixtures" / "stages" / "trajectories.jsonl"
ROOT = Path(__file__).parent.parent.parent


@pytest.mark.parametrize(
    "config,schema,override,named",
    [
        ("configs/cpt/tiny-cpu.yaml", CptConfig, "trainer.lrr=0.1", "trainer.lrr"),
        ("configs/cpt/tiny-cpu.yaml", CptConfig, "cpt.task_cal=2", "cpt.task_cal"),
        ("configs/sft/tiny-cpu.yaml", SftConfig, "phase2.stepz=3", "phase2.stepz"),
        ("configs/sft/tiny-cpu.yaml", SftConfig, "steps=-1", "steps"),
        ("configs/sft/tiny-cpu.yaml", SftConfig, "data.families=[create_file,no_such]", "no_such"),
        ("configs/sft/tiny-cpu.yaml", SftConfig, "sft.mask_errors=maybe", "sft.mask_errors"),
        ("configs/cpt/tiny-cpu.yaml", CptConfig, "eval.engine=tgi", "eval.engine"),
    ],
)
def test_a_bad_config_value_is_one_error_naming_the_key(config, schema, override, named):
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / config, [override], schema)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_the_shipped_configs_validate_and_share_one_dataset():
    cpt = load_config(ROOT / "configs/cpt/tiny-cpu.yaml", [], CptConfig)
    sft = load_config(ROOT / "configs/sft/tiny-cpu.yaml", [], SftConfig)
    assert sft.model.dir == cpt.run_dir / "model"  # SFT starts where CPT ends
    assert dataset_dir(cpt.data) == dataset_dir(sft.data)
    changed = sft.data.model_copy(update={"mistake_rate": 0.5})
    assert dataset_dir(changed) != dataset_dir(sft.data) and inputs(changed)["mistake_rate"] == 0.5


def test_a_dataset_is_reused_only_when_made_from_the_same_inputs(tmp_path):
    cfg = load_config(ROOT / "configs/cpt/tiny-cpu.yaml", [f"data.dir={tmp_path}"], CptConfig).data
    d = dataset_dir(cfg)
    assert not ready(cfg)
    d.mkdir(parents=True)
    (d / "all.jsonl").write_text(FIXTURE.read_text())
    (d / "inputs.json").write_text(json.dumps(inputs(cfg) | {"mistake_rate": 0.9}))
    assert not ready(cfg)  # another dataset's inputs: not this one
    (d / "inputs.json").write_text(json.dumps(inputs(cfg)))
    assert ready(cfg)


def unresolved_dataset(path: Path) -> Path:
    rows = [Trajectory.model_validate_json(line) for line in FIXTURE.read_text().splitlines()]
    path.write_text("".join(t.model_copy(update={"status": "unresolved", "reward": 0.0}).model_dump_json() + "\n"
                            for t in rows))  # fmt: skip
    return path


@pytest.mark.parametrize("stage", ["sft", "cpt"])
def test_no_usable_data_is_one_line_before_any_model_is_made_or_loaded(tmp_path, capsys, stage):
    data = unresolved_dataset(tmp_path / "failed.jsonl") if stage == "sft" else tmp_path / "empty.jsonl"
    if stage == "cpt":
        data.write_text("")
    model = tmp_path / "no-model-yet"
    rc = main([stage, str(ROOT / f"configs/{stage}/tiny-cpu.yaml"), f"runs_dir={tmp_path}", f"model.dir={model}",
               f"data.path={data}", "eval.enabled=false"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert ("no verified trajectories" if stage == "sft" else "no trajectories") in err and str(data) in err
    assert not model.exists()  # CPT would have created it with rome init: refused before that


def test_sft_without_a_cpt_model_names_the_missing_dir(tmp_path, capsys):
    rc = main(["sft", str(ROOT / "configs/sft/tiny-cpu.yaml"), f"runs_dir={tmp_path}", f"model.dir={tmp_path}/none",
               f"data.path={FIXTURE}", "eval.enabled=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path}/none" in err and "roll cpt" in err


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def losses(metrics: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]


@pytest.mark.slow
def test_cpt_then_sft_train_a_few_steps_change_the_weights_lower_the_loss_and_write_the_summary(tmp_path, capsys):
    # Every step sees the same few sequences (batch = the whole set), so the loss must fall step on step.
    common = [f"runs_dir={tmp_path}", f"data.path={FIXTURE}", "eval.enabled=false", "trainer.progress=false",
              "trainer.warmup_steps=0", "trainer.schedule=constant"]  # fmt: skip
    rc = main(["cpt", str(ROOT / "configs/cpt/tiny-cpu.yaml"), *common, f"model.dir={tmp_path}/init", "name=cpt",
               "cpt.full=0", "cpt.result_call=0", "cpt.task_call=1", "cpt.variants=0", "cpt.fresh=0",
                   "trainer.batch_sequences=4", "steps=4",
               "trainer.lr=1e-3"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    cpt = json.loads((tmp_path / "cpt/summary.json").read_text())
    cpt_losses = losses(tmp_path / "cpt/train/metrics.jsonl")
    assert len(cpt_losses) == 4 and cpt_losses[-1] < cpt_losses[0]
    before, after = weights(tmp_path / "init"), weights(tmp_path / "cpt/model")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

    rc = main(["sft", str(ROOT / "configs/sft/tiny-cpu.yaml"), *common, f"model.dir={tmp_path}/cpt/model",
               "name=sft", "sft.variants=0", "trainer.batch_sequences=4", "steps=3", "trainer.lr=2e-4",
                   "phase2.steps=0"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    sft = json.loads((tmp_path / "sft/summary.json").read_text())
    sft_losses = losses(tmp_path / "sft/phase1/metrics.jsonl")
    assert len(sft_losses) == 3 and sft_losses[-1] < sft_losses[0]
    cpt_w, sft_w = weights(tmp_path / "cpt/model"), weights(tmp_path / "sft/model")
    assert any(not torch.equal(cpt_w[k], sft_w[k]) for k in cpt_w)
    out = capsys.readouterr().out
    assert "roll cpt: cpt:" in out and "roll sft: sft:" in out
    for summary, stage in ((cpt, "cpt"), (sft, "sft")):
        assert summary["stage"] == stage and summary["before"] is None and summary["after"] is None
        assert {"total", "setup", "train"} <= set(summary["wall_s"]) and summary["settings"]["name"] == stage
        assert Path(summary["plot"]).is_file() and summary["data"]["trajectories"] == 4
    assert sft["data"]["report"]["masked_chunks"]["errors"] == 2  # the fixture's two failed calls
    assert sft["train"]["phase1"]["steps"] == 3 and cpt["train"]["steps"] == 4


def test_the_heldout_summary_lists_every_family_and_the_heldout_only_ones_apart_with_failed_calls():
    from rock.contracts import ToolResult
    from roll.eval.results import AttemptRecord, EvalReport
    from roll.stages.heldout import summarize

    def attempt(task: str, family: str, status: str, calls: list[tuple[bool, bool]]):
        t = Trajectory(trajectory_id=task, task_id=task, family=family, split="heldout", status=status,
                       reward=float(status == "resolved"),
                       tool_results=[ToolResult(tool="run_shell_command", parsed=p, ok=o) for p, o in calls])  # fmt: skip
        return AttemptRecord.of(t, 0, Path("/nowhere")), t

    rows = [attempt("a-1", "create_file", "resolved", [(True, True)]),
            attempt("a-2", "create_file", "unresolved", [(False, False), (True, False)]),
            attempt("b-1", "make_dir", "resolved", [(True, True)]),
            attempt("c-1", "symlink", "unresolved", [])]  # fmt: skip
    report = EvalReport(agent="iflow", records=[r for r, _ in rows], trajectories=[t for _, t in rows])
    s = summarize(report, ["create_file", "make_dir"], ["symlink"])
    assert s["pass_rate"] == 0.5 and s["trained_families"] == round(2 / 3, 4) and s["heldout_only_families"] == 0.0
    assert s["by_family"]["create_file"]["pass_rate"] == 0.5 and set(s["by_family"]) == {"create_file", "make_dir",
                                                                                         "symlink"}  # fmt: skip
    assert (s["tool_calls"], s["failed_tool_calls"], s["unparsed_tool_calls"]) == (4, 2, 1)
