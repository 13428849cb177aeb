"""Storage: the only package that knows SQL or which database is behind the gateway."""
