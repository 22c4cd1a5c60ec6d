"""`python -m ml.predict`: the command line of ml/predict/cli.py."""

from ml.predict.cli import main

if __name__ == "__main__":
    main()
