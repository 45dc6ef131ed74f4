"""Test backends shipped with iflow: `python3 -m iflow_cli.testing.scripted_server --help`."""
