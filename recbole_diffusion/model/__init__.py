"""The plugin's models, one module each, found by name by ``get_model``."""
