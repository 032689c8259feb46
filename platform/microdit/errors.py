"""The project's user-facing error type.

A ``ConfigError`` is a user mistake (a bad field, file or value). Its message names the
culprit and what is allowed; the CLI prints it on one line without a traceback.
"""


class ConfigError(ValueError):
    """Invalid user input: a config field, a file or a value. The message says how to fix it."""
