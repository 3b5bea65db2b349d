"""Training a map's correctness gate (``adaras gate train``)."""
