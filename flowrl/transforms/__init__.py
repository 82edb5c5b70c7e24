"""Transforms by family: one module per family (see the README's map)."""
