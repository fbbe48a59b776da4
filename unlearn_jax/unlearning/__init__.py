"""Unlearning methods as optax gradient transformations over per-objective gradients.

Modules: `combine` (weighted sums, masks), `sgu`, `dimum`, `salun`,
`gradient_ascent`, `sfron`, `saliency` (mask stages), `methods` (the registry
the pipeline uses).  Names are not re-exported here so that module names stay
importable as modules.
"""
