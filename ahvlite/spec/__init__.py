"""Pydantic models: ahvlite's vocabulary and its validation."""
