"""What every resolver gets: the database, the caller's org and per-request dataloaders."""

from dataclasses import dataclass, field

from sqlalchemy import Row
from strawberry.dataloader import DataLoader

from storage.database import Database
from storage.orgs import get_containers


def _container_loader(db: Database) -> DataLoader[tuple[str, str], Row | None]:
    async def load(keys: list[tuple[str, str]]) -> list[Row | None]:
        async with db.session() as session:
            found = await get_containers(session, keys=keys)
        return [found.get(key) for key in keys]

    return DataLoader(load_fn=load)


@dataclass
class Context:
    db: Database
    org_id: str | None  # the API key's org: the only one this request may see
    containers: DataLoader[tuple[str, str], Row | None] = field(init=False)

    def __post_init__(self) -> None:
        self.containers = _container_loader(self.db)
