"""The error every bad input ends in: one clear line, exit status 2. Its own module, with no
imports, so every part can raise it without importing the config models."""


class ConfigError(ValueError):
    """A bad config or input; the message says which file and key, and how to fix it."""
