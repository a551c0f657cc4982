"""The exceptions llmrt raises for things a user can fix; the CLI prints them as one line."""


class LlmrtError(Exception):
    """An error the user can act on. `exit_code` is what the command line exits with."""

    exit_code = 1


class UsageError(LlmrtError):
    """A bad flag or argument value (exit code 2, like a usage error)."""

    exit_code = 2


class DeviceNotFound(UsageError):
    """`--device` names a backend or an index that does not exist here."""


class PluginError(LlmrtError):
    """A plugin broke the contract (wrong API version, a hook that raised)."""


class OutOfDeviceMemory(LlmrtError):
    """A device could not allocate what was asked for."""


class UnsupportedOp(LlmrtError):
    """A device was asked to run an op it declined in `supports_op`."""


class GGUFError(LlmrtError):
    """A GGUF file is missing, malformed or unsupported.

    `offset` is the byte offset where the problem was found (None when it is not about a place in
    the file, such as a missing file); `what` says what was wrong.
    """

    def __init__(self, offset: int | None, what: str, path: str | None = None) -> None:
        self.offset = offset
        self.what = what
        self.path = path
        prefix = f"{path}: " if path else ""
        if offset is None:
            super().__init__(f"{prefix}{what}")
        else:
            super().__init__(f"{prefix}bad GGUF file at byte {offset}: {what}")
