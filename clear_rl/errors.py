"""User-facing errors.

Anything a user can cause by what they pass (a recipe key, a file, a row of a dataset, a reward
plugin) raises a `ClearRLError` whose message names the offending thing. The CLI prints these
without a traceback; everything else is a bug and keeps its traceback.
"""


class ClearRLError(Exception):
    """An error in the user's input, with a message that says what to fix."""


class DataError(ClearRLError):
    """A file, row or image that cannot be read or used."""


class RecipeError(ClearRLError):
    """A recipe key that does not exist, has the wrong type, or is missing."""


class RewardError(ClearRLError):
    """A reward plugin that cannot be loaded, raises, or returns the wrong thing."""


class DependencyError(ClearRLError):
    """An installed package whose API differs from the versions clear-rl is tested with."""
