"""The trainer's typed errors: each message is one line that names what is wrong."""

from roll.errors import RollError


class TrainerError(RollError):
    """Base of the supervised trainer's errors."""


class DivergedError(TrainerError):
    """`max_bad_steps` optimizer steps in a row had a NaN/Inf loss; the weights are those of the last good step."""


class CheckpointError(TrainerError):
    """A checkpoint that cannot be resumed: another model shape, another run length, a missing file."""


class NoDataError(TrainerError):
    """Nothing to train: no sequences, or none with a loss-bearing token."""
