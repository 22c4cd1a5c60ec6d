"""`python -m ml.calibrate`: the command line of ml/calibrate/cli.py."""

from ml.calibrate.cli import main

if __name__ == "__main__":
    main()
