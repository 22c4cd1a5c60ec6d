"""`python -m ml.evaluate`: the command line of ml/evaluate/report.py."""

from ml.evaluate.report import main

if __name__ == "__main__":
    main()
