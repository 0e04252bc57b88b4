"""Reference data sets for Facet (generated offline; nothing is downloaded)."""
