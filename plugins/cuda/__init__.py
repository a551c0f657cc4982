"""cuda backend (probe only so far)."""
