"""Per-dataset property files of ADRec (``props/ADRec/<dataset>.yaml``)."""
