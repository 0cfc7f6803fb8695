"""The one exception type users see.

An InputError is a problem with what the user gave us (a file, an argument, a model). Its message is
one line that names the file or argument, says what was expected and what was found, and what to do
next. Front ends print it without a traceback (the CLI exits with code 2).
"""


class InputError(ValueError):
    """Bad user input: a file, an argument or a model. The message is shown as is."""
