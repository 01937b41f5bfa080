"""The one exception type for mistakes a user can make.

Anything a user can cause (a bad path, bad data, a bad config value, a character the
tokenizer has never seen) raises `QkvError` with a single sentence that says what is wrong
and, where it helps, what to do. The command line prints that sentence and exits with
status 2; every other exception is a bug in qkv and keeps its traceback. It is a
`ValueError`, so library users can catch it as one.
"""


class QkvError(ValueError):
    """A problem caused by the user's input, explained in one line."""

    exit_code = 2


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a resumable checkpoint.

    Not a mistake and not a bug: the command line prints the message (where the checkpoint
    is and how to resume) and exits with 128 + the signal's number, as a shell would report
    the signal: 130 for SIGINT (Ctrl-C), 143 for SIGTERM.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class JobBroken(Exception):
    """Another process of a torchrun job died or stopped answering, so this one stops too.

    Not a bug here: the command line prints the one-line message (torchrun's own report
    names the process that failed first) and exits with status 1. Checkpoints are written
    atomically, so the last one in the run directory is whole and `--resume` goes on from it.
    """

    exit_code = 1
