"""Validation of GraphQL requests against the OpenCTI schema of one platform release.

The OpenCTI stand-in answers with hand-written resolvers; this module makes it refuse, as the
platform does, any document that the schema of the configured release would refuse: an unknown
field or argument, a wrong selection, or variables that do not fit their declared types (an input
object field the release does not have, such as ``RegisterConnectorInput.version`` before 7.x).

The schemas are the subsets stored under ``schemas/`` (``opencti-<release>.graphql``; each names
the platform copy it was taken from). They are parsed with graphql-core, the Python port of the
``graphql`` package the platform itself validates with (``opencti-platform/opencti-graphql``
depends on ``graphql`` 16 in 6.x, 17 in 7.x), so parse, validation and variable coercion follow
the same rules.

Always strict: the stand-in refuses an invalid request as the platform does, records it in
``standin.schema.violations`` and fails the test when it stops, even if the client under test
swallowed the error answer.

The release is chosen by :func:`configured_release`: the ``CTX_STANDIN_OPENCTI_RELEASE``
environment variable (``make compat`` sets it per pycti version), else the release matching the
installed pycti (pycti's major.minor is the platform's; any 7.x is ``7.x``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphql import (
    GraphQLError,
    GraphQLSchema,
    build_schema,
    get_operation_ast,
    parse,
    validate,
)
from graphql.execution import get_variable_values

#: Set by ``make compat`` (tests/compat/run.py) to the platform release matching the pycti under test.
RELEASE_ENV = "CTX_STANDIN_OPENCTI_RELEASE"
SCHEMA_DIR = Path(__file__).with_name("schemas")
#: Used when neither the environment nor an installed pycti names a release.
DEFAULT_RELEASE = "6.8"
#: What ``about { version }`` answers on each stored release: the platform version the tests
#: pair with it (tests/compat/run.py). A 7.x platform says its date version, as its
#: opencti-graphql ``package.json`` does (7.260910.0 for the copy ``opencti-7.x.graphql`` is
#: taken from); the 7.x subset also has what pycti 7.261026.0 sends, hence that version.
RELEASE_VERSIONS = {"6.5": "6.5.10", "6.8": "6.8.17", "6.9": "6.9.29", "7.x": "7.261026.0"}


class SchemaViolationError(AssertionError):
    """Documents reached the stand-in that the configured OpenCTI release would have refused."""


def available_releases() -> list[str]:
    """The releases with a stored schema subset, e.g. ``["6.5", "6.8", "6.9", "7.x"]``."""
    return sorted(p.stem.removeprefix("opencti-") for p in SCHEMA_DIR.glob("opencti-*.graphql"))


def release_for_pycti(version: str) -> str:
    """The platform release a pycti version is made for: ``6.8.17`` → ``6.8``, ``7.261026.0`` → ``7.x``.

    pycti is released with the platform and shares its version (major.minor) up to 6.x; from 7.0
    pycti uses date versions (7.YYMMDD.n), so only the major version says which platform it fits.
    """
    major, _, rest = version.partition(".")
    if major == "6":
        return f"6.{rest.split('.')[0]}"
    return f"{major}.x"


def configured_release() -> str:
    """``CTX_STANDIN_OPENCTI_RELEASE``, else the installed pycti's release, else :data:`DEFAULT_RELEASE`."""
    release = os.environ.get(RELEASE_ENV)
    if release:
        return release
    try:
        return release_for_pycti(importlib.metadata.version("pycti"))
    except importlib.metadata.PackageNotFoundError:
        return DEFAULT_RELEASE


@functools.cache
def load_schema(release: str) -> GraphQLSchema:
    """The stored schema subset of ``release``; ``ValueError`` names the stored ones if absent."""
    path = SCHEMA_DIR / f"opencti-{release}.graphql"
    if not path.is_file():
        raise ValueError(
            f"no OpenCTI schema stored for release {release!r}; stored: {available_releases()}"
        )
    return build_schema(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Violation:
    """One refused request: what was sent and why the release refuses it."""

    release: str
    operation: str
    code: str
    messages: tuple[str, ...]
    query: str

    def __str__(self) -> str:
        reasons = "; ".join(self.messages)
        return f"[{self.release}] {self.operation} ({self.code}): {reasons}\n    {' '.join(self.query.split())}"


def check_request(
    schema: GraphQLSchema, query: str, variables: dict[str, Any] | None
) -> tuple[str, list[str]] | None:
    """None when the request is valid, else the platform's error code and the messages.

    Parse and validation failures are ``GRAPHQL_VALIDATION_FAILED`` (``GRAPHQL_PARSE_FAILED`` for a
    syntax error); variables that do not coerce to their declared types are ``BAD_USER_INPUT``
    (Apollo Server's codes, ``@apollo/server`` ``ApolloServerErrorCode``).
    """
    try:
        document = parse(query)
    except GraphQLError as exc:
        return "GRAPHQL_PARSE_FAILED", [exc.message]
    errors = validate(schema, document)
    if errors:
        return "GRAPHQL_VALIDATION_FAILED", [e.message for e in errors]
    operation = get_operation_ast(document)
    if operation is None:
        return "GRAPHQL_VALIDATION_FAILED", ["Must provide a single operation."]
    coerced = get_variable_values(schema, operation.variable_definitions or (), variables or {})
    if isinstance(coerced, list):
        return "BAD_USER_INPUT", [e.message for e in coerced]
    return None


@dataclass
class SchemaValidator:
    """Checks every request against one release and keeps the refused ones."""

    release: str
    strict: bool = True
    violations: list[Violation] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_release(cls, release: str | None = None) -> SchemaValidator:
        """A strict validator (see :meth:`raise_if_violated`) for ``release`` or the configured one.

        Strict everywhere: a stand-in kinder than the platform would hide a document the platform
        refuses. A test that sends an invalid document on purpose empties :attr:`violations`
        after checking it.
        """
        chosen = release or configured_release()
        load_schema(chosen)
        return cls(chosen, strict=True)

    @property
    def schema(self) -> GraphQLSchema:
        return load_schema(self.release)

    def check(
        self, operation: str, query: str, variables: dict[str, Any] | None
    ) -> Violation | None:
        """Validate one request and record it if invalid; return it when it must be refused.

        Only a strict validator refuses (the stand-in then answers with :meth:`answer`); otherwise
        the request is recorded in :attr:`violations` and answered as before, so tests written
        before validation existed keep their behaviour unless a release is configured.
        """
        problem = check_request(self.schema, query, variables)
        if problem is None:
            return None
        code, messages = problem
        violation = Violation(self.release, operation, code, tuple(messages), query)
        with self._lock:
            self.violations.append(violation)
        return violation if self.strict else None

    def raise_if_violated(self) -> None:
        """In strict mode, fail with every refused request (the stand-in calls this when it stops).

        A test that talks to a stand-in configured for a release (``make compat``) then errors at
        teardown with the documents the platform would have refused, even when the client under
        test swallowed the error answer.
        """
        with self._lock:
            violations = list(self.violations)
        if self.strict and violations:
            listing = "\n".join(f"  {v}" for v in violations)
            raise SchemaViolationError(
                f"{len(violations)} request(s) invalid for OpenCTI {self.release}:\n{listing}"
            )

    def answer(self, violation: Violation) -> tuple[int, dict[str, Any]]:
        """The platform's answer to a refused request.

        Apollo Server (the platform's ``@apollo/server``) answers a document that fails to parse or
        validate with HTTP 400 and the error under ``errors`` with ``extensions.code``; from
        ``@apollo/server`` 5 (OpenCTI 6.8 ships 5.2.0) variable coercion errors are 400 too.
        """
        return 400, {
            "errors": [
                {"message": message, "extensions": {"code": violation.code}}
                for message in violation.messages
            ]
        }
