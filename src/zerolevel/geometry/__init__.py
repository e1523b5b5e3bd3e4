"""Geometry leaves: mesh loading and normalisation, mesh extraction from fields."""
