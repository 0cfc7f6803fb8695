"""The one exception type users see.

An InputError is a problem with what the user gave us (a file, an argument, a model). Its message is
one line that names the file or argument, says what was expected and what was found, and what to do
next. Front ends print it without a traceback (the CLI exits with code 2).
"""


import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad user input: a file, an argument or a model. The message is shown as is."""


def run_command(prog: str, run: Callable[[list[str]], object], argv: list[str] | None) -> None:
    """A command-line front end's main: an InputError prints one line and exits with 2, Ctrl+C 130."""
    try:
        run(sys.argv[1:] if argv is None else argv)
    except InputError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
