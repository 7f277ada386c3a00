"""``python -m dsched``: the same command line as the ``dsched`` script."""

from dsched._cli import main

if __name__ == "__main__":
    main()
