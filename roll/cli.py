"""The `roll` command: `roll train configs/rl/tiny-cpu.yaml [key=value ...] [--dry-run] [--resume]`, `roll plan CONFIG`.

Bad input (a missing config, an unknown key, an unknown task family, a missing image) is one line on
stderr and exit status 2; an interrupted run exits 130 after removing what it started.
"""

from __future__ import annotations

import argparse
import sys

from roll.config import check_train_workers, load_config
from roll.errors import RollError

OVERRIDES_HELP = "dotted overrides applied after the file, e.g. train.iterations=1 agent.max_tokens=32"


def _user_errors() -> tuple[type[BaseException], ...]:
    # Errors the user can fix; anything else is a bug and keeps its traceback.
    errors: list[type[BaseException]] = [RollError, ValueError, FileNotFoundError]
    for module, name in (("rock.errors", "RockError"), ("rome.errors", "RomeError")):
        try:
            errors.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from roll.resume import check as check_resume

    if args.dry_run:
        from roll.plan import check

        check_train_workers(cfg)
        check(cfg)
        if args.resume:  # what the run would resume from; a plain dry run says nothing of the run dir
            point = check_resume(cfg, resume=True)
            print(f"dry run: would resume {cfg.run_dir} after iteration {point.state.iteration}")
        print(f"dry run: {args.config} is valid and fits; nothing was started")
        return 0
    if cfg.device == "cuda":
        # A cluster recipe that does not fit fails here, not an hour into the run. (The CPU default skips
        # the plan: building the model on the meta device costs ~10 s of torch import on the 2-core machine.)
        from roll.plan import PlanError, make_plan

        plan = make_plan(cfg)
        if not plan.fits:
            raise PlanError(f"{cfg.name} does not fit: {'; '.join(plan.problems)} (see `roll plan {args.config}`)")
        import torch

        if not torch.cuda.is_available():
            raise RollError("device cuda: no CUDA device is visible here (start the run on the GPU cluster)")
    # before the curriculum's minutes: nothing to resume, another config, a run dir that would be overwritten
    check_train_workers(cfg)  # what train.workers > 1 cannot do yet is refused, not ignored
    check_resume(cfg, args.resume)
    from roll.curriculum import run_train

    return run_train(cfg, resume=args.resume)


def cmd_plan(args: argparse.Namespace) -> int:
    from roll.plan import check

    check(load_config(args.config, args.overrides))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roll",
        description="ROLL: reinforcement learning of agents on Ray — vLLM inference workers, DeepSpeed trainers, "
        "the iflow agent in ROCK sandboxes.",
        epilog="Start with `roll train configs/rl/tiny-cpu.yaml` (what `make train-rl` runs).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="run RL iterations: rollouts in sandboxes, a trainer update, weight sync",
        description="Run the training curriculum from a YAML config: the config's `curriculum` stages first "
        "(synthesis, CPT, SFT; each reused while its config and starting weights are unchanged), then RL from "
        "SFT's model (or model.dir, created with rome init if missing): Ray, the inference and trainer workers "
        "and a rock server; per iteration iflow attempts in sandboxes, rewards from the task tests, one update "
        "(train.algorithm: ipa, grpo or ppo), the new weights loaded for sampling. Writes metrics.jsonl, "
        "trajectories.jsonl, policy/v<N>, checkpoints/ (after every iteration), summary.json and curves.png under "
        "runs/<name>/. A run dir that holds completed iterations is not overwritten: continue it with --resume "
        "or choose another name=.",
    )
    train.add_argument("config", help="YAML run config, e.g. configs/rl/tiny-cpu.yaml")
    train.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    train.add_argument("--dry-run", action="store_true", help="validate the config, print its plan, start nothing")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in runs/<name>/ after its last completed iteration (after kill -9, Ctrl-C or a dead "
        "worker): policy, optimizer, RNG, rollback state and metrics carry on; the unfinished iteration's "
        "trajectories are discarded, never trained on. Only train.iterations and timeouts may differ from the "
        "run's config (run_config.json)",
    )
    train.set_defaults(func=cmd_train)
    plan = sub.add_parser(
        "plan",
        help="print the memory and device plan of a run config; exit 2 when it does not fit",
        description="Print parameter counts, per-device memory of weights, gradients and optimizer state under "
        "the ZeRO stage, the vLLM tensor/expert-parallel layout and KV-cache budget, and the placement on the "
        "cluster's nodes, for the same file `roll train` reads (configs/rl/rome-30b-a3b.yaml, tiny-cpu.yaml). "
        "When it does not fit: one line naming each short resource and by how much, exit status 2.",
    )
    plan.add_argument("config", help="YAML run config, e.g. configs/rl/rome-30b-a3b.yaml")
    plan.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    plan.set_defaults(func=cmd_plan)
    from roll.data.cli import register as register_data

    register_data(sub)
    from roll.eval.cli import register as register_eval

    register_eval(sub)
    from roll.tasks.cli import register as register_tasks

    register_tasks(sub)
    from roll.stages.cli import register as register_stages

    register_stages(sub)
    from roll.rollout.resample_cli import register as register_resample

    register_resample(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `roll train CONFIG --dry-run key=value`: argparse stops the overrides at the flag; the rest come back here
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130  # a run reports and cleans up itself; this is Ctrl-C before or after one
    except _user_errors() as e:
        print(f"roll: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
