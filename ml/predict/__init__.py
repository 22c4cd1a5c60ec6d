"""Using a model folder (`python -m ml.predict`): the Predictor the web app serves with, and
saliency maps."""
