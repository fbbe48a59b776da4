r"""Robustness of SGU's unconditional score models (issue 32): Standard, SGU-Orthogonal and
SGU-Obtuse, each attacked from its own weights by (stage attack_<model><suffix>):

  ""            DiMRA on D_r (DiMUM paper Eq. 7, assumption i): fine-tuning on the retained data
  _fewshot<k>   few-shot relearning on k forget examples (k = 1, 5; the same, nested examples
                for every model: `experiment.fewshot_indices`)
  _benign       benign fine-tuning on D_r's examples of the retained classes other than the
                forgotten class's alternative (`experiment.benign_classes`)

An unconditional model has no forget condition, so each curve point measures its two
forgetting numbers (`tasks.classes.attack_measures`): "ar", the unlearning ratio (the share of
samples the classifier files under the forgotten class; toy data: the nearest mixture
component), and "nll_forget", the NLL of the first eval.nll.num_examples forget test examples
(bits/dim, probability-flow ODE): the likelihood probe, whose drop from step 0 measures how
much likelier the forgotten data became.  report.md's robustness section plots both per attack
(robustness_<attack>.png, robustness_<attack>_nll.png); robustness.json holds the curves and
summaries, each against the Standard model measured in the attack stage at step 0 with the same
samples and keys (`stages.attack.write_reference`; Standard is its own reference).

  python -m unlearn_jax.main --config=configs/robustness_sgu.py:cpu --workdir=~/runs/robustness_sgu_toy
  python -m unlearn_jax.main --config=configs/robustness_sgu.py:cpu,mnist --workdir=~/runs/robustness_sgu_mnist

Arguments (comma-separated): cpu (accepted; both variants are CPU-sized), mnist (SGU's MNIST
cpu model, `sgu_mnist.py:cpu`, instead of the toy mixture, `sgu_toy.py`), attacks=<a1-a2-...>
(default: `ATTACKS`; any of `config_lib.parse_attacks`' fine-tuning entries), attack=<steps>,
every=<eval interval>.

Scale choices (set before any run, not tuned on an outcome): every attack runs at the model's
own training learning rate (toy 2e-3, MNIST cpu 2e-3 for Standard's training) with the
training batch size; toy: 500 steps, a point every 100, 2,000 samples and 200 NLL examples per
point; MNIST cpu: 300 steps, a point every 150, 160 samples and 16 NLL examples per point (each
MNIST point costs ~40 s of sampling and NLL on 2 cores).
"""
import importlib.util
import os

from unlearn_jax import config_lib

ATTACKS = ("retain", "fewshot1", "fewshot5", "benign")
MODELS = ("standard", "sgu_orthogonal", "sgu_obtuse")
SMOKE_ARG = "cpu"


def _sibling(name: str):
  """Another config file of this directory, loaded by path (configs/ is no package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def get_config(arg=None):
  a = config_lib.parse_arg(arg, {"cpu": True, "mnist": True, "attacks": "", "attack": 0, "every": 0})
  mnist = bool(a.get("mnist"))
  c = _sibling("sgu_mnist").get_config("cpu") if mnist else _sibling("sgu_toy").get_config()
  c.experiment = "robustness"
  attacks = config_lib.parse_attacks(a.get("attacks", ""), default=ATTACKS)
  bad = [d for d in attacks if d in config_lib.CONDITION_ATTACKS or d == "synthetic"]
  if bad:
    raise ValueError(f"attacks={a['attacks']!r}: {bad[0]!r} needs a conditional model (or a synthesize stage); "
                     f"expected fine-tuning attacks among {', '.join(ATTACKS)}, test_retain, fewshot<k>")
  steps, every = (300, 150) if mnist else (500, 100)
  if mnist:
    c.eval.update(dict(attack_num_samples=160))
    c.eval.nll.num_examples = 16
  else:
    c.eval.update(dict(attack_num_samples=2000))
    c.eval.nll.num_examples = 200
    c.eval.nll.batch_size = 200
  order = [n for n in c.stage_order if n != "report"]
  config_lib.attack_stages(c.stages, order, MODELS, attacks, init="standard", steps=a.get("attack") or steps,
                           eval_every=a.get("every") or every, synthetic=0,
                           lr_kw={"lr": c.optim.lr})
  c.stage_order = tuple(order) + ("report",)
  return c
