"""Dataset property files, shipped as package data."""
