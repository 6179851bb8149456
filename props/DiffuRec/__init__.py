"""Property files of DiffuRec beyond its defaults (``props/DiffuRec/*.yaml``)."""
