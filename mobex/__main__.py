"""`python -m mobex` is the same as the `mobex` console script."""

from mobex.cli import main

if __name__ == "__main__":
    main()
