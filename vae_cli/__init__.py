"""The `vae` command: one entry point, each subcommand's package imported only when it runs."""

__all__ = ["main"]

from vae_cli.main import main
