"""Bridges from the broker to other messaging systems: optional parts, each importing its
client lazily."""
