"""Images in: the one photo decoder, the datasets, augmentation, the robustness suite's inputs,
the far-out sets and the official download. Imports nothing else of ml."""
