"""``python -m sim``: the servesim command line."""

from sim.cli import main

if __name__ == "__main__":
    main(prog_name="servesim")
