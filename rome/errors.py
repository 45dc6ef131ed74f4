"""The errors rome raises for bad input; the CLI prints them as one line and exits non-zero."""


class RomeError(Exception):
    """Bad input the user can fix: an unknown config, a missing or corrupt model dir."""


class UnknownConfigError(RomeError):
    pass


class ModelDirError(RomeError):
    pass


class WeightSyncError(RomeError):
    """A weight update the engine cannot apply: not safetensors, unknown tensors, a layer sent in parts."""
