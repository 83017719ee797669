"""`python -m imgtrans` runs the command-line interface."""

from imgtrans.cli import main

main()
