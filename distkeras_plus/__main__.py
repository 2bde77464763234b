"""`python -m distkeras_plus` is `dk`."""

from distkeras_plus.cli import main

main(prog_name="dk")
