"""Finishing a model folder (`python -m ml.calibrate`): temperature, novelty threshold, the suite's
figures, written with the weights."""
