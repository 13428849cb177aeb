"""What every resolver gets: the database, the caller's org and per-request dataloaders."""

from dataclasses import dataclass, field
from typing import Any

from strawberry.dataloader import DataLoader

from schema.errors import Forbidden
from storage.database import Database
from storage.keys import DEFAULT_SCOPES, Scope, allows, scopes_text
from storage.orgs import ContainerRecord, get_containers


def _container_loader(db: Database) -> DataLoader[tuple[str, str], ContainerRecord | None]:
    async def load(keys: list[tuple[str, str]]) -> list[ContainerRecord | None]:
        # A request only ever reads its own org, so one statement per org is one in all.
        found: dict[tuple[str, str], ContainerRecord] = {}
        async with db.reader() as reader:
            for org_id in {org_id for org_id, _ in keys}:
                ids = [container_id for owner, container_id in keys if owner == org_id]
                rows = await get_containers(reader, org_id=org_id, container_ids=ids)
                found.update({(org_id, container_id): row for container_id, row in rows.items()})
        return [found.get(key) for key in keys]

    return DataLoader(load_fn=load)


@dataclass
class Context:
    db: Database
    org_id: str | None  # the API key's org: the only one this request may see
    containers: DataLoader[tuple[str, str], ContainerRecord | None] = field(init=False)
    key_id: str | None = field(default=None, kw_only=True)  # recorded on the events it writes
    scopes: frozenset[Scope] = field(default=DEFAULT_SCOPES, kw_only=True)
    # Set by the executor when a compiled plan answered the operation (schema.compiled): the
    # operation and its fragments, for GatewaySchema.execute to remember its text by.
    compiled_operation: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.containers = _container_loader(self.db)

    def require(self, needed: Scope) -> None:
        """Raise FORBIDDEN unless the key's scopes allow `needed`."""
        if not allows(self.scopes, needed):
            action = "read events" if needed is Scope.READ else "write events"
            raise Forbidden(
                f"This API key cannot {action}: its scope is {scopes_text(self.scopes)}. "
                f"Use a key with the {needed.value} scope."
            )
