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


class BadInput(Exception):
    """A file, key or id the user has to fix; the message names it and says what to do."""

    exit_code = EXIT_BAD_INPUT


class CheckpointError(BadInput, ValueError):
    """Weights that cannot be read, or that do not fit the model the spec describes."""


class ResultsDirError(BadInput):
    """A results folder that cannot be used for this run (a file, another model, in use)."""


class RunFailed(Exception):
    """A run that went through but produced nothing usable; the message says which step."""

    exit_code = EXIT_FAILED


class Stopped(BaseException):
    """SIGTERM arrived: the run stops where it is; checkpoints and flushed results stay.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """

    exit_code = EXIT_STOPPED

    def __str__(self) -> str:
        return "stopped (SIGTERM); run the same command to resume"
