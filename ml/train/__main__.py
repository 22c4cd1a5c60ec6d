"""`python -m ml.train`: the command line of ml/train/cli.py."""

from ml.train.cli import main

if __name__ == "__main__":
    main()
