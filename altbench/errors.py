"""The one error type for user mistakes.

The CLI entry point turns a `UserError` into one line on stderr and exit code 2; anything else
is a bug in altbench and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: the message names the problem and the fix, on one line."""


def one_line(text: str) -> str:
    """`text` on one line: a line break inside it (a user's value echoed back) is shown escaped."""
    return "".join(c.encode("unicode_escape").decode() if len(f"a{c}a".splitlines()) > 1 else c for c in text)
