"""Label sets and dataset descriptions."""
