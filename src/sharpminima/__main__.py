"""``python -m sharpminima`` (also what ``torchrun -m sharpminima`` runs)."""

from sharpminima.cli.app import main

if __name__ == "__main__":
    main()
