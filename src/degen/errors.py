"""Errors raised by degen.

One root, :class:`DegenError`, and a few subclasses. Every message says what went
wrong *and what to do next*, in one line, because the CLI prints it as is.

``UsageError`` and its subclasses are the user's input being wrong (bad flag, bad
file, unreachable server): the CLI exits with code 2 for them. Anything else that
reaches the CLI is a failure of the job itself and exits with code 1.
"""

from __future__ import annotations


class DegenError(Exception):
    """Root of every error degen raises on purpose."""


class UsageError(DegenError):
    """The input is wrong: a flag, a parameter, a file. The CLI exits with code 2."""


class InvalidParams(UsageError, ValueError):
    """A sampling parameter or option is outside its valid range."""


class InputFileError(UsageError):
    """An input file cannot be read or a line in it is malformed."""


class PromptFileError(InputFileError):
    """A prompts file cannot be read or a line in it is malformed."""


class ModelNotFound(UsageError):
    """A model path does not exist or is not a model degen can load."""


class UnknownName(UsageError, KeyError):
    """A name looked up in a registry is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ServerUnreachable(UsageError):
    """No OpenAI-compatible server answered at the given URL."""


class OutputDirError(UsageError):
    """The output folder cannot be used as asked (exists, not resumable, ...)."""


class EngineError(DegenError):
    """The engine failed in a way that is not tied to one request."""
