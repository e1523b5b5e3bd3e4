"""Renderers: pure functions from (mesh or field, cameras) to images."""
