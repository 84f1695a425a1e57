"""ipva layer."""
