"""Training (`python -m ml.train`): the loop, checkpoints, multi-process helpers, presets.

Importing this package loads no torch: the web app reads ml.train.presets for its job form.
"""
