"""Load stage: the user's model file, their config, and checkpoints."""
