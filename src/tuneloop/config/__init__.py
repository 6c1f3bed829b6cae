"""Typed configuration: recipes are validated once, at the edge, into these objects."""
