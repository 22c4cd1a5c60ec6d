"""`python -m ml.export`: the command line of ml/export/cli.py."""

from ml.export.cli import main

if __name__ == "__main__":
    main()
