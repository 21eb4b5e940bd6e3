"""The ``nearcast`` console script (placeholder replaced below)."""


def main() -> None:
    """Entry point."""
