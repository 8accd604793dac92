"""User-facing errors.

Every problem a user can cause (a bad file, a bad config key, a checkpoint that does not
fit) raises a subclass of `LmforgeError`. The CLI prints its message as one line on
stderr and exits with code 2; library users catch the specific class.
"""


class LmforgeError(Exception):
    """A problem with the user's input; the message says what and where."""


class ConfigError(LmforgeError):
    """A config key is unknown, has the wrong type, or an invalid value."""


class TokenizerError(LmforgeError):
    """A tokenizer cannot be trained, loaded or used as asked."""


class DataError(LmforgeError):
    """A corpus, data file or token shard is missing, empty or inconsistent."""


class CheckpointError(LmforgeError):
    """A checkpoint or run directory is missing, incomplete or does not fit the model."""


class DiskError(LmforgeError):
    """A folder cannot be written: it is a file, read-only, or not ours to write."""


class DiskFullError(DiskError):
    """No space left on the disk (or the quota is used up) while writing."""
