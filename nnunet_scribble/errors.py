"""Errors about bad user input. Messages name the offending file(s) and say how to fix them."""


class UserFacingError(Exception):
    """Bad input from the user: the message names the offending file(s) and the fix."""
