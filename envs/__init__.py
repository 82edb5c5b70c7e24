"""Gymnasium environments for exploration (registered under the ``flowrl/`` namespace)."""
