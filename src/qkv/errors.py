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
