"""`python -m repackctl` runs the CLI."""

from repackctl.cli.app import main

if __name__ == "__main__":
    main()
