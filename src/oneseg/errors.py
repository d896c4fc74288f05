"""The failures oneseg expects, and the exit code of each.

Every expected failure reaches the user as one line naming the file, key or id at fault and what
to do; the command line (`oneseg.cli.main`) turns exceptions into that line and an exit code:

    2    bad input: a spec, dataset, image, checkpoint or folder the user has to fix
    1    failed: the run broke for another reason (the traceback: `--debug` or ONESEG_DEBUG=1)
    143  stopped by SIGTERM (128 + 15, as a shell reports it); the same command resumes
    130  interrupted by Ctrl-C
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_STOPPED = 143


def one_line(text: str) -> str:
    """`text` with newlines and other control characters written as escapes (`\\n`), so that a
    file name holding one is shown whole on the one line of an error."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class BadInput(Exception):
    """A file, key or id the user has to fix; the message names it and says what to do.
    The message is always one line: control characters in a name are shown escaped."""

    exit_code = EXIT_BAD_INPUT

    def __str__(self) -> str:
        text = super().__str__()
        if text.startswith("Caught ") and "\nOriginal Traceback" in text:
            return text  # re-raised by a data-loader worker: the CLI reads its last line
        return one_line(text)


class CheckpointError(BadInput, ValueError):
    """Weights that cannot be read, or that do not fit the model the spec describes."""


class InputFileError(BadInput, ValueError):
    """A file or folder the user named that cannot be used (unreadable, foreign, empty, or in
    the way); the message names it and never repeats its content."""


class ResultsDirError(BadInput):
    """A results folder that cannot be used for this run (a file, another model, in use)."""


class RunFailed(Exception):
    """A run that went through but produced nothing usable; the message says which step."""

    exit_code = EXIT_FAILED


class NoSpace(RunFailed):
    """A disk filled up while writing; nothing half-written was left behind."""


class Stopped(BaseException):
    """SIGTERM arrived: the run stops where it is; checkpoints and flushed results stay.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    exit_code = EXIT_STOPPED

    def __str__(self) -> str:
        return "stopped (SIGTERM); run the same command to resume"
