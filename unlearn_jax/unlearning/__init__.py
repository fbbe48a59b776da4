"""Unlearning methods, each an optax gradient transformation over per-objective gradients.

A method is described by `Method`: the objectives it needs (name -> data stream
and per-example loss) and the transform that combines their gradients.  The
first objective's gradient is the transform's `updates`; the others are passed
as keyword extras named `<objective>_grads`.
"""
