"""One exception tree for hspi, translated once into CLI exit codes (and later HTTP statuses).

HspiError
 ├── ConfigError      bad grid / model / platform / option value
 ├── DatasetError     corrupt, truncated or inconsistent dataset files
 ├── ModelError       classifier artifacts, or a model's files, missing or unusable
 ├── TargetError      a target failed to answer probes
 └── CollectionError  a collection configuration failed to run
"""


class HspiError(Exception):
    """Root of every error hspi raises on purpose; the message is one line for a person."""

    exit_code = 1


class ConfigError(HspiError):
    exit_code = 2


class DatasetError(HspiError):
    exit_code = 3


class ModelError(HspiError):
    exit_code = 4


class TargetError(HspiError):
    exit_code = 5


class CollectionError(HspiError):
    exit_code = 6
