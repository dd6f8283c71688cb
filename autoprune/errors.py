"""The one exception type users see: a clear, one-line message about bad input."""


class AutopruneError(ValueError):
    """Bad input or an unusable file; the message says what is wrong and how to fix it."""
