"""Datasets: the canonical record every source is converted to, and the sources themselves."""
