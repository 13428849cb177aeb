"""`python -m gateway`: the `events-gateway` command without the console script."""

from gateway.cli import main

if __name__ == "__main__":
    main()
