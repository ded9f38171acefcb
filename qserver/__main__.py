"""`python -m qserver`: the CLI, even where another package's `qserver` script shadows ours."""

from qserver.cli import main

if __name__ == "__main__":
    main()
