"""The `hfx` commands, one module each (services/cli.py wires them into one parser)."""
