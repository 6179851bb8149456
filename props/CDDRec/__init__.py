"""Per-dataset property files of CDDRec (``props/CDDRec/<dataset>.yaml``)."""
