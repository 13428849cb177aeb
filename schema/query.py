"""The root Query: everything starts from the caller's own organization."""

import strawberry
from strawberry.types import Info

from schema.context import Context
from schema.errors import NotFound
from schema.types import Organization
from storage.keys import Scope


@strawberry.type
class Query:
    @strawberry.field(description="An organization; only the API key's own org is visible.")
    async def org(self, info: Info[Context, None], id: strawberry.ID) -> Organization | None:
        row = None
        if id == info.context.org_id:
            row = await info.context.db.org(id)
        if row is None:
            raise NotFound(f"Organization {id!r} not found.")
        info.context.require(Scope.READ)
        return Organization.from_row(row)
