"""`stages.train.method_consts`: a mask stage's output reaches the slot its method's kind reads."""
from unlearn_jax.stages import train as train_stage
from unlearn_jax.unlearning import methods

MASK, FROZEN = {"w": 1}, {"w": 2}


def test_each_mask_kind_reaches_its_slot():
  route = lambda name, mask=MASK: train_stage.method_consts(methods.spec(name).options(), mask, FROZEN)
  assert route("sa") == ({"fisher": MASK, "frozen": FROZEN}, None)        # SA's Fisher, and theta*
  assert route("shs") == ({}, MASK)                                        # the weights to reset
  assert route("salun") == ({"mask": MASK}, None) and route("sfron") == ({"mask": MASK}, None)
  assert route("core") == ({"mask": MASK, "frozen": FROZEN}, None)         # a SalUn mask on CORE
  assert route("core", None) == ({"frozen": FROZEN}, None) and route("ga", None) == ({}, None)
