"""Mistakes a user can make; every command turns them into one line and exit code 2."""


class UserError(Exception):
    """A problem the user can fix: a bad flag value, file or parameter."""


class DataError(UserError):
    """A data file that is missing, unreadable or not MNIST-shaped."""


class ParamsError(UserError):
    """A params dict (or JSON file) that is not a point of the search space."""
