"""ablab: measured deep-learning ablations."""
