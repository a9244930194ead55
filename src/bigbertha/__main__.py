"""`python -m bigbertha` runs the CLI."""

from bigbertha.cli import app

app()
