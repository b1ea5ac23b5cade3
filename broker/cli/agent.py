"""Sub-commands (being written)."""


def register(subparsers) -> None:  # noqa: ARG001 - filled in by the module's owner
    return None
