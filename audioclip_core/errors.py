"""Error types users catch, in a module that imports nothing heavy."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with what to do about it."""


class InputError(ValueError):
    """One input (a file, a text) that cannot be used, named, with the reason. Batch tools
    (`inference.try_embed_files`, the CLI) record it for that input and go on with the rest."""


class AudioDecodeError(InputError):
    """A file that cannot be decoded into audio, with the reason."""


class TextTooLongError(InputError):
    """A text whose tokens do not fit the text tower's context."""

    def __init__(self, text: str, tokens: int, context_length: int):
        self.text, self.tokens, self.context_length = text, tokens, context_length
        shown = text if len(text) <= 60 else text[:57] + "..."
        super().__init__(
            f"text {shown!r} is {tokens} tokens long, more than the context length "
            f"{context_length} (pass truncate=True to cut it)"
        )


class LineageError(ValueError):
    """A lineage question that cannot be answered (e.g. a checkpoint without a record)."""


def is_symlink_loop(path) -> bool:
    """Whether following `path` runs into a loop of symbolic links (where `Path.exists()`
    only says False)."""
    import errno
    import os

    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def check_input_file(path, what: str = "file", error: type = InputError) -> None:
    """Raise `error` (an `InputError`) saying whether `path` is missing, a symbolic link loop,
    a directory or unreadable."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise error(f"{p}: is a directory, not a {what}")
    if is_symlink_loop(p):
        raise error(f"{p}: is a symbolic link loop; give the {what} itself")
    if not p.exists():
        raise error(f"{p}: no such {what}")
    if not p.is_file():
        raise error(f"{p}: not a regular file")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise error(f"{p}: cannot be read: {exc.strerror or exc}") from exc
