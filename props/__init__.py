"""The plugin's property files, shipped as package data."""
