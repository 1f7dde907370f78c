"""The release management system's errors: problems a retry cannot fix, each ending its step in one line.

Plain Python, no temporalio: activities turn these into non-retryable failures by their type names.
"""

from __future__ import annotations


class ReleaseError(Exception):
    """A problem that retrying cannot fix: the release must stop and say why."""


class UnknownRelease(ReleaseError):
    pass


class CatalogError(ReleaseError):
    pass


class MissingArtifact(ReleaseError):
    pass


class InvalidStep(ReleaseError):
    """A step whose input fails validation, as a client that skipped it could send."""


class NotVerified(ReleaseError):
    """A promotion of a version the ledger does not show passing its tests in the environment before."""


class LedgerBroken(NotVerified):
    """The ledger's hash chain breaks at a line nobody sealed: no promotion is proven until a person does."""


class GateFailed(ReleaseError):
    """A quality gate's verdict: final for this version in this environment, whatever a retry would do."""


class VerificationFailed(ReleaseError):
    """The health check after a deploy's tests failed: final, like a gate."""


class RollbackRefused(ReleaseError):
    """A rollback-env with no version to put back, or asked by someone who may not: nothing was deployed."""


class OutsideWorkspace(ReleaseError):
    """A path the worker would read or write through a symbolic link, or outside its workspace: refused."""


class InvalidInput(ReleaseError):
    """A release started with an input no person chooses (the worker's catalog gives the rest): nothing ran."""


class LedgerUnavailable(OSError):
    """The ledger's database cannot be reached, or failed mid-transaction: nothing was half-written, and the step
    is retried (an OSError, as a workspace fault is) until it is back."""


# Error types a retry cannot fix; the workflow lists them in its retry policies.
NON_RETRYABLE_ERRORS = [
    c.__name__
    for c in (
        UnknownRelease,
        CatalogError,
        MissingArtifact,
        InvalidStep,
        NotVerified,
        LedgerBroken,
        GateFailed,
        VerificationFailed,
        RollbackRefused,
        OutsideWorkspace,
        InvalidInput,
    )
]
# Refusals of a release's start: nothing ran, the input was wrong. The starter says so in one line, exit 2.
REFUSED_AT_START = (UnknownRelease.__name__, CatalogError.__name__, RollbackRefused.__name__, InvalidInput.__name__)

# Failures a release's on_failure policy settles; any other failure stops the release.
SETTLED_BY_POLICY = (GateFailed.__name__, VerificationFailed.__name__)


def root_cause(err: BaseException) -> BaseException:
    """The innermost cause: a failed release arrives wrapped in workflow and activity errors."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err
