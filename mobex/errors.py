"""Errors that reach the user: each says what is wrong and how to fix it, and maps to an exit code."""

from __future__ import annotations


class MobexError(Exception):
    """Base for every error mobex reports to the user instead of a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(MobexError):
    """Bad input from the user: recipe, data, arguments. Exit code 2, like argument errors."""

    exit_code = 2


class RecipeError(UsageError):
    """A mistake in the recipe file; the message names the file and the field."""


class DataError(UsageError):
    """Validation or calibration data that cannot be used; the message names the array."""


class ConversionError(MobexError):
    """A converter (litert-torch, coremltools) failed on this model."""

    exit_code = 3


class GateFailed(MobexError):
    """A validation gate failed: nothing ships."""

    exit_code = 4


class VerificationError(MobexError):
    """A bundle, signature or archive failed verification: never trust its contents."""

    exit_code = 5


# `mobex drift` found new data that differs from what the bundle was validated on. Not an error of
# mobex or of the input: a finding, reported with its own exit code so scripts can tell them apart.
DRIFT_EXIT_CODE = 6
