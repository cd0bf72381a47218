"""`python -m latentwatch` is the `latentwatch` command."""

from latentwatch.cli import main

main()
