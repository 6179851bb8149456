"""Diffusion-based sequential recommenders for RecBole."""

__version__ = "0.1.0"
