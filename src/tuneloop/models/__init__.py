"""Choosing and loading models: catalog, local model store, resolution, memory/time estimates."""
