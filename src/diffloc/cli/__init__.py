"""Command-line interface: ``diffloc <command>``; one module per command."""
