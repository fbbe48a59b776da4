"""Reporting: what a run writes for people to read (curve CSVs and plots; results tables)."""
