"""Models, training and checkpoints."""
