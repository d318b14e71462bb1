"""Error types users catch, in a module that imports nothing heavy."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with what to do about it."""


class AudioDecodeError(ValueError):
    """A file that cannot be decoded into audio, with the reason."""


class LineageError(ValueError):
    """A lineage question that cannot be answered (e.g. a checkpoint without a record)."""
