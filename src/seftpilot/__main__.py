"""`python -m seftpilot`."""

from seftpilot.cli import main

main()
