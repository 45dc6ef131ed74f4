"""SFT data: `sft_sequences(trajectories, tokenizer, cfg, phase=1)`; tests: `.venv/bin/pytest tests/roll/test_sft_data.py`.

Each verified trajectory is rendered as ROME sees and emits it (`render.py`), packed (one sequence while the
prompts extend each other), masked (errors, duplicate rounds, optionally the history a compression replaced),
and filtered by phase 1's rules on what still carries loss (`filters.py`). Phase 2 trains the same set through
`AdaptiveSampler` (which sequences, how often), so `phase=2` gives the same sequences; `SftData.families`
is what the sampler balances.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from rock.contracts import Trajectory
from roll.algo.packing import PackedSequence, pack_trajectory
from roll.errors import ConfigError
from roll.sft.data import DataError, NoVerifiedDataError
from roll.sft.filters import RULES, Rule, check_shell_syntax, violation
from roll.sft.masks import duplicate_chunks, failed_chunks, mask_chunks, replaced_history_chunks, trained_chunks
from roll.sft.relex import augment, lookalike_share_field, piece_share_field, word_style
from roll.sft.render import RenderError, load_tokenizer, render_trajectory


class SftDataConfig(BaseModel):
    """What SFT trains on: the masks and phase 1's rules, each a switch so runs can be compared."""

    model_config = ConfigDict(extra="forbid")
    mask_errors: bool = Field(
        True,
        description="no loss on chunks whose tool call failed to parse or to run; off, those calls are trained, "
        "so the rules then drop their trajectories unless `filters` leaves out unparsed_call/unknown_tool/shell_syntax",
    )
    mask_duplicates: bool = Field(True, description="no loss on rounds that repeat a call with nothing changed")
    mask_replaced_history: bool = Field(
        False, description="no loss on the chunks before the last context compression (the history it replaced)"
    )
    filters: list[Rule] = Field(default_factory=lambda: list(RULES), description="phase 1's rules, by name")
    pack: bool = Field(True, description="one sequence per run of extending prompts (False: one per chunk)")
    variants: int = Field(
        0,
        ge=0,
        description="relexicalised copies of each kept trajectory, the instance's words "
        "replaced by fresh ones (roll/sft/relex.py)",
    )
    pseudo_share: float = Field(0.5, ge=0, le=1, description="share of replacement words that are made up")
    lookalike_share: float = lookalike_share_field()
    piece_share: float = piece_share_field()
    seed: int = 0


class SftReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trajectories: int = 0
    kept: int = 0
    dropped: dict[str, int] = {}  # by rule
    masked_chunks: dict[str, int] = {}  # by mask: errors, duplicates, replaced_history
    sequences: int = 0
    loss_tokens: int = 0


@dataclass
class SftData:
    sequences: list[PackedSequence]
    families: list[str]  # of each sequence, for the sampler
    report: SftReport = field(default_factory=SftReport)


def masked_sequences(traj: Trajectory, tokenizer, cfg: SftDataConfig, counts: Counter) -> list[PackedSequence]:
    """The trajectory rendered, packed and masked as `cfg` says; `counts` gets the chunks each mask cleared."""
    chunks = render_trajectory(traj, tokenizer)
    masks = {
        "errors": failed_chunks(traj) if cfg.mask_errors else set(),
        "duplicates": duplicate_chunks(traj) if cfg.mask_duplicates else set(),
        "replaced_history": replaced_history_chunks(chunks) if cfg.mask_replaced_history else set(),
    }
    present = {c.index for c in chunks}
    for name, indices in masks.items():
        counts[name] += len(indices & present)
    drop = set().union(*masks.values())
    return [mask_chunks(s, drop) for s in pack_trajectory(chunks, pack=cfg.pack)]


def sft_dataset(trajectories: list[Trajectory], tokenizer, cfg: SftDataConfig | None = None, phase: int = 1) -> SftData:
    """Phase 1's (and phase 2's) training set, with what was dropped and masked counted."""
    cfg = cfg or SftDataConfig()
    if phase not in (1, 2):
        raise ConfigError(f"SFT phase must be 1 or 2, got {phase}")
    if "tests_failed" in cfg.filters and not any(t.resolved for t in trajectories):
        raise NoVerifiedDataError(f"none of the {len(trajectories)} trajectories is verified (resolved by its tests)")
    tokenizer = load_tokenizer(tokenizer)
    trajectories = augment(trajectories, cfg.variants, cfg.pseudo_share, cfg.seed, word_style(cfg, tokenizer))
    rules = set(cfg.filters)
    if "shell_syntax" in rules:
        check_shell_syntax(t for t in trajectories if t.resolved or "tests_failed" not in rules)
    report, dropped, masked = SftReport(trajectories=len(trajectories)), Counter(), Counter()
    sequences, families = [], []
    for traj in trajectories:
        if "tests_failed" in rules and not traj.resolved:  # before rendering: most of a failed set is cheap
            dropped["tests_failed"] += 1
            continue
        counts = Counter()
        try:
            seqs = masked_sequences(traj, tokenizer, cfg, counts)
        except RenderError:
            dropped["unrenderable"] += 1
            continue
        trained = set().union(*(trained_chunks(s) for s in seqs))
        if reason := violation(traj, trained, rules):
            dropped[reason] += 1
            continue
        masked.update(counts)
        kept = [s for s in seqs if s.loss_mask.any()]  # a sequence whose every reply was masked teaches nothing
        sequences += kept
        families += [traj.family] * len(kept)
        report.kept += 1
    report.dropped, report.masked_chunks = dict(sorted(dropped.items())), dict(sorted(masked.items()))
    if not sequences:
        raise DataError(f"phase 1 kept none of the {len(trajectories)} trajectories (dropped: {report.dropped})")
    report.sequences, report.loss_tokens = len(sequences), sum(int(s.loss_mask.sum()) for s in sequences)
    return SftData(sequences, families, report)


def sft_sequences(
    trajectories: list[Trajectory], tokenizer, cfg: SftDataConfig | None = None, phase: int = 1
) -> list[PackedSequence]:
    """The packed, masked, filtered sequences SFT trains on (see `sft_dataset` for the counts)."""
    return sft_dataset(trajectories, tokenizer, cfg, phase).sequences
