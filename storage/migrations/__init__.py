"""Alembic's environment and the schema's revisions (run through storage.migrate)."""
