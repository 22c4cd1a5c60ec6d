"""`python -m ml.train`: the command line of ml/train/loop.py."""

from ml.train.loop import main

if __name__ == "__main__":
    main()
