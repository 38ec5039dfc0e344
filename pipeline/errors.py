"""Errors caused by the user's input: printed as one clear paragraph, never as a traceback."""


class UserError(Exception):
    """Bad config, bad data or a bad path: the message says what, where, and what was expected."""


class ConfigError(UserError):
    """A config key or value that cannot be used."""


class DataError(UserError):
    """A data file or row that does not match the expected format."""
