"""Placeholder filled by the post-mortem stage: documentation of checkpoint-only cause ids."""
POSTMORTEM_DOCS: dict[str, str] = {}
