"""Checkpoints as a source of facts (`inspect`, for postmortem) and of a starting state
(`resume`, for `scan --checkpoint`)."""
