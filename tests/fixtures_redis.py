"""Placeholder until the redis fixtures land."""
