"""`python -m kakumei.cli`: the same as the `kakumei` command."""

from kakumei.cli import run

run()
