"""`python -m qserver.cli`."""

from qserver.cli import main

if __name__ == "__main__":
    main()
