"""The networks and what stands beside them: architectures and test-time augmentation, the
novelty scores, optimisers, device and precision, and model folders on disk."""
