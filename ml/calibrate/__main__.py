"""`python -m ml.calibrate`: the command line of ml/calibrate/finish.py."""

from ml.calibrate.finish import main

if __name__ == "__main__":
    main()
