"""The one exception type that the CLI turns into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: unknown names, bad numbers, missing or corrupt files."""
