"""`roll cpt CONFIG [key=value ...] [--resume]` and `roll sft CONFIG [key=value ...] [--resume]`.

`register(sub)` adds both commands to roll's parser (roll/cli.py). Tests: `.venv/bin/pytest tests/roll/test_stages.py`.
"""

from __future__ import annotations

import argparse

from roll.cli import OVERRIDES_HELP


def _print(summary: dict) -> None:
    def rate(entry: dict | None) -> str:
        return f"{entry['pass_rate']:.1%}" if entry else "not measured"

    train = summary["train"]
    phases = train.values() if summary["stage"] == "sft" else [train]
    print(f"roll {summary['stage']}: {summary['name']}: held-out pass@1 {rate(summary['before'])} -> "
          f"{rate(summary['after'])}; final loss {[p['final_loss'] and round(p['final_loss'], 4) for p in phases]}; train "
          f"{summary['wall_s']['train']:.0f}s, total {summary['wall_s']['total']:.0f}s; model {summary['model']}; "
          f"{summary['run_dir']}/summary.json, {summary['plot']}")  # fmt: skip


def cmd_cpt(args: argparse.Namespace) -> int:
    from roll.config import load_config
    from roll.stages.config import CptConfig
    from roll.stages.run import run_cpt

    _print(run_cpt(load_config(args.config, args.overrides, CptConfig), resume=args.resume))
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from roll.config import load_config
    from roll.stages.config import SftConfig
    from roll.stages.run import run_sft

    _print(run_sft(load_config(args.config, args.overrides, SftConfig), resume=args.resume))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for name, func, example, what in (
        ("cpt", cmd_cpt, "configs/cpt/tiny-cpu.yaml", "continued pre-training on synthesised agent trajectories "
         "(failures included; short task-only examples mixed with the agent's full prompt)"),
        ("sft", cmd_sft, "configs/sft/tiny-cpu.yaml", "two-phase SFT from CPT's model: phase 1 on rule-filtered "
         "verified trajectories with failed calls masked, phase 2 with adaptive selection"),
    ):  # fmt: skip
        p = sub.add_parser(
            name,
            help=what.split(" (")[0],
            description=f"{what[0].upper()}{what[1:]}. Synthesises the dataset when missing (kept under "
            "runs/data/, reused while its inputs are unchanged), trains on DeepSpeed, writes the HF model to "
            "runs/<name>/model, held-out pass rates before and after (iflow on rome serve in sandboxes) to "
            "runs/<name>/summary.json, and runs/<name>/curves.png.",
        )
        p.add_argument("config", help=f"YAML stage config, e.g. {example}")
        p.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
        p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of this run")
        p.set_defaults(func=func)
