"""`python -m poleng` is the `poleng` command."""

from poleng.cli import main

main()
