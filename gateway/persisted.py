"""Persisted-operations mode: only the operations stored in queries/*.graphql are executed.

A request names a stored operation in one of three ways: its full text (compared after
normalising: whitespace, commas and comments do not count), Apollo's
`extensions.persistedQuery.sha256Hash` (the SHA-256 of the stored file's text), or a
`documentId` that is the operation's name or `sha256:<hex>`. Whatever the request sent, the
stored text is what runs; anything else is refused before it is parsed for execution.
"""

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from graphql import GraphQLError, OperationDefinitionNode, parse, print_ast

QUERIES_FOLDER = Path(__file__).resolve().parent.parent / "queries"
SHA256_PREFIX = "sha256:"


class PersistedOperationError(Exception):
    """The request names no stored operation; `code` says why."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _normal_form(text: str) -> str | None:
    """The document as graphql-core prints it, or None if it does not parse."""
    try:
        return print_ast(parse(text, no_location=True))
    except GraphQLError:
        return None


@dataclass(frozen=True)
class StoredOperation:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return sha256(self.text)

    @classmethod
    def read(cls, path: Path) -> "StoredOperation":
        """The file's one named operation; anything else in queries/ is a mistake to stop on."""
        text = path.read_text()
        operations = [
            definition
            for definition in parse(text, no_location=True).definitions
            if isinstance(definition, OperationDefinitionNode)
        ]
        if len(operations) != 1 or operations[0].name is None:
            raise ValueError(f"{path} must hold exactly one named operation")
        return cls(operations[0].name.value, text)


class PersistedOperations:
    """The stored operations, found by name, by hash or by their normalised text."""

    def __init__(self, operations: Iterable[StoredOperation]) -> None:
        self._operations = sorted(operations, key=lambda operation: operation.name)
        self._by_name = {operation.name: operation for operation in self._operations}
        self._by_hash = {operation.sha256: operation for operation in self._operations}
        self._by_normal_form = {_normal_form(op.text): op for op in self._operations}
        # A document much longer than every stored one cannot be one of them written with more
        # whitespace or comments: it is refused without being parsed.
        self._max_length = 4 * max((len(op.text) for op in self._operations), default=0)

    @classmethod
    def from_folder(cls, folder: Path = QUERIES_FOLDER) -> "PersistedOperations":
        return cls(StoredOperation.read(path) for path in sorted(folder.glob("*.graphql")))

    def __iter__(self) -> Iterator[StoredOperation]:
        return iter(self._operations)

    def document(self, *, query: object, extensions: object, document_id: object) -> str:
        """The stored text the request names; PersistedOperationError if it names none."""
        named = self._named(extensions, document_id)
        if named is not None:
            if query is not None and self._matching(query) is not named:
                raise PersistedOperationError(
                    "The query differs from the persisted operation it names.",
                    "OPERATION_NOT_PERSISTED",
                )
            return named.text
        if query is None:
            raise PersistedOperationError(
                "Only persisted operations are accepted: send a stored operation's text, "
                "its documentId, or extensions.persistedQuery.sha256Hash.",
                "PERSISTED_QUERY_NOT_FOUND",
            )
        matching = self._matching(query)
        if matching is None:
            raise PersistedOperationError(
                "Only persisted operations are accepted, and this document is not one of them.",
                "OPERATION_NOT_PERSISTED",
            )
        return matching.text

    def _named(self, extensions: object, document_id: object) -> StoredOperation | None:
        """The operation a documentId or a persistedQuery hash names, if the request has one."""
        if document_id is not None:
            if not isinstance(document_id, str):
                raise PersistedOperationError("documentId must be a string.", "BAD_REQUEST")
            if document_id.startswith(SHA256_PREFIX):
                return self._found(self._by_hash.get(document_id.removeprefix(SHA256_PREFIX)))
            return self._found(self._by_name.get(document_id))
        persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        if persisted is None:
            return None
        if not isinstance(persisted, dict) or persisted.get("version") != 1:
            raise PersistedOperationError(
                "extensions.persistedQuery must be {version: 1, sha256Hash: <hex>}.",
                "BAD_REQUEST",
            )
        digest = persisted.get("sha256Hash")
        return self._found(self._by_hash.get(digest) if isinstance(digest, str) else None)

    @staticmethod
    def _found(operation: StoredOperation | None) -> StoredOperation:
        if operation is None:
            raise PersistedOperationError(
                "No persisted operation has this id or hash.", "PERSISTED_QUERY_NOT_FOUND"
            )
        return operation

    def _matching(self, query: object) -> StoredOperation | None:
        if not isinstance(query, str):
            return None
        exact = self._by_hash.get(sha256(query))
        if exact is not None or len(query) > self._max_length:
            return exact
        return self._by_normal_form.get(_normal_form(query))
