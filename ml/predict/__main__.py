"""`python -m ml.predict`: the command line of ml/predict/predictor.py."""

from ml.predict.predictor import main

if __name__ == "__main__":
    main()
