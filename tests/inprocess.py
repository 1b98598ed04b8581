"""`altbench` commands run inside the test process, seen as a user sees them: the exit code and
what went to stdout and stderr. Starting Python and torch once per command would cost seconds,
which property tests that run many commands cannot afford."""

import io
import os
from contextlib import chdir, redirect_stderr, redirect_stdout
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def altbench(*args, cwd=None) -> Result:
    from altbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), chdir(cwd or os.getcwd()):
        code = main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())
