"""radiolens."""
