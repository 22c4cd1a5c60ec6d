"""`python -m ml.evaluate`: the command line of ml/evaluate/cli.py."""

from ml.evaluate.cli import main

if __name__ == "__main__":
    main()
