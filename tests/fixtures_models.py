"""Placeholder until the models fixtures land."""
