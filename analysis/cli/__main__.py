"""`python -m analysis.cli` runs the `t2i-audit` command."""

from analysis.cli import main

main()
