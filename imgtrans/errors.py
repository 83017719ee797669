"""User-facing errors: the CLI prints their message as one line, never a traceback."""


class UserError(Exception):
    """Bad input or setup the user can fix; the message names the file or option and the fix."""
