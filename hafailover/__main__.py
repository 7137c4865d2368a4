"""`python -m hafailover` is the `hafailover` command."""

from hafailover.cli import main

main()
