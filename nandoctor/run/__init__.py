"""Run stage: instrumented training steps, the replay of a failing step, confirming experiments."""
