"""`python -m synood_cli` (also what torchrun and accelerate launch run)."""

from synood_cli.cli.app import main

if __name__ == "__main__":
    main()
