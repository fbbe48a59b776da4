"""Unlearning methods as optax gradient transformations over per-objective gradients.

Modules: `combine` (weighted sums, masks), `saliency` (mask stages), `spec`
(`MethodSpec`: one method's facts and builder), one module per method (`finetune`,
`sgu`, `gradient_ascent` (GA and NegGrad), `dimum`, `salun`, `sfron`, `erasediff`,
`core`, `esd`, `concept_ablation`, `selective_amnesia`, `scissorhands`), each with its
`SPEC`, and `methods` (the table of specs the pipeline uses).  Names are not
re-exported here so that module names stay importable as modules.
"""
