"""The edge of the gateway: Starlette app, config, auth, REST shim, error mapping, CLI."""
