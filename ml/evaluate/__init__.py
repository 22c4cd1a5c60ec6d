"""Measuring a model (`python -m ml.evaluate`): reports, the robustness suite, far-out sets and
the serving policy."""
