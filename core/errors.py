"""One exception type for bad user input, so the CLI can print it as one line and exit non-zero."""


class DepmicroError(Exception):
    """A problem with the user's input or settings; the message is shown to the user as is."""
