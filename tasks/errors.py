"""The one exception type for problems the user can fix (bad data, bad parameters)."""


class InputError(ValueError):
    """A problem with the user's input, reported as one line without a traceback.

    The message names the file, column or parameter and says what to do about it.
    """
