"""What a method is, as one record: `MethodSpec` (and the `Options` its builder returns).

Every method module (`finetune`, `sgu`, `gradient_ascent`, `dimum`, ...) declares its config
block as a frozen `Config` dataclass and ends with

    SPEC = spec.MethodSpec(section="core", config=Config, name="core", display="CORE", build=build,
                           conditional=True, frozen=True, variant_field="core.scheme")

where `build(config, ctx) -> (objectives, transform or None, Options)` makes the method's
objectives and optax transform from the typed config (a `settings.Settings`, whose
`config.<section>` is a `Config`; `ctx` is `methods.BuildContext`: the stage's variant, the
alternative classes, the step count, ... and helpers for the baselines' alternative table).
A closed-form method (UCE) has no objectives: its `closed_form(config, ctx, params) -> params`
is the whole stage (`methods.edit`).  `methods` collects the specs into its table; nothing
here imports `methods` or a method module, so the method modules can import this one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

#: the mask stage kinds (`saliency`, `scissorhands`, `selective_amnesia`'s Fisher) a method may require.
MASK_KINDS = ("salun", "sfron", "shs", "fisher")


@dataclasses.dataclass(frozen=True)
class Options:
  mask: Optional[str] = None       # the mask kind the method itself uses
  alternate: bool = False          # one objective per step, in turn
  frozen: bool = False             # needs consts["frozen"]: the parameters it starts from
  reset: bool = False              # re-initialises the masked weights before training (SHS)
  lr: Optional[float] = None       # the stage's step size, in place of its lr (EraseDiff's couple_lr)


def default_passes(config, objectives: Mapping[str, Any], options: Options, backend: str) -> Tuple[int, int]:
  """(forward+backward, forward-only) model passes of one step, per-objective batch: one
  forward+backward pass per objective and one forward pass per regression target from a model
  (`Objective.target`).  An alternating step (SFR-on) computes one objective on an accelerator;
  on CPU it computes every objective and selects (`training.train_step`), and no target."""
  del config
  fwd_bwd = 1 if (options.alternate and backend != "cpu") else len(objectives)
  fwd_only = 0 if options.alternate else sum(o.target is not None for o in objectives.values())
  return fwd_bwd, fwd_only


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One unlearning method: its name, how it is shown, what it needs, and how it is built.

  Attributes:
    name: the config name (`config.stages.<unlearn>.method`).
    display: the report's name (`reporting.markdown.PRETTY`).
    build: `build(config, ctx) -> (objectives, transform or None, Options)`; the first
      objective's gradient is the transform's `updates`, the others arrive as `<name>_grads`.
    conditional: needs a class-conditional model.
    mask: the mask stage kind it takes (`MASK_KINDS`); None: it optionally takes a "salun" mask.
    requires_mask: a stage of the method must name a mask stage (the mask is its data: the
      weights Scissorhands resets, Selective Amnesia's Fisher); otherwise the mask is optional.
    frozen: needs consts["frozen"] (the parameters it starts from) for every variant (a builder
      may also ask for them for one variant only: EraseDiff on CORE's losses).
    reset: re-initialises the masked weights before training (Scissorhands).
    alternate: one objective per step, in turn (SFR-on).
    variant_field: what a stage's `variant` selects: a config field "section.key" the variant
      overrides for that stage, a tuple of the allowed variants the builder reads from
      `ctx.variant`, or None (no variants).
    variant_doc: how `methods.VARIANTS` describes the variants ("config.<variant_field>" if empty).
    stage_display: the report's name of a stage "<name>_<variant>" per variant, where it has its own
      (SGU's "SGU-Orthogonal"); other stages read "<display> (<variant>)".
    passes: `passes(config, objectives, options, backend) -> (fwd_bwd, fwd_only)`, the model passes
      of one step (benchmarks/unlearn_step.py, benchmarks/sd_step.py).
    section: the config section of the method's coefficients (`config.<section>`), or None.
    config: the frozen dataclass of that section (its defaults are `config_lib.base()`'s;
      `settings.of` builds it from the config dict).
    closed_form: `edit(config, ctx, params) -> params` for a method that is one closed-form
      edit of the weights, not an optimisation (UCE): `stages.train` calls it in place of the
      training loop and saves its result as the stage's checkpoint; the stage's `steps` are
      ignored (config builders give it 0), it takes no mask, and `build` returns no objectives.
    model: the `config.model.name` the method needs (UCE: "sd", the Stable Diffusion UNet with
      its prompt table), checked by `validation` before anything is written; None: any.
    check: `check(section)` of the method's own fields (`config.<section>`, the config dict's
      or the typed one), called by `validation.check_config` for the methods a config's stages
      use, before anything is written; None: the builder checks them.
  """
  name: str
  display: str
  build: Callable
  conditional: bool = False
  mask: Optional[str] = None
  requires_mask: bool = False
  frozen: bool = False
  reset: bool = False
  alternate: bool = False
  variant_field: Union[None, str, Tuple[str, ...]] = None
  variant_doc: str = ""
  stage_display: Dict[str, str] = dataclasses.field(default_factory=dict)
  passes: Callable = default_passes
  section: Optional[str] = None
  config: Optional[type] = None
  closed_form: Optional[Callable] = None
  model: Optional[str] = None
  check: Optional[Callable] = None

  def __post_init__(self):
    if self.mask is not None and self.mask not in MASK_KINDS:
      raise ValueError(f"{self.name}: mask {self.mask!r} is not one of {MASK_KINDS}")
    if (self.section is None) != (self.config is None):
      raise ValueError(f"{self.name}: section and config go together")
    if self.requires_mask and self.mask is None:
      raise ValueError(f"{self.name}: requires_mask without a mask kind")
    if isinstance(self.variant_field, str) and self.variant_field.count(".") != 1:
      raise ValueError(f"{self.name}: variant_field {self.variant_field!r} is not 'section.key'")
    if self.closed_form is not None and (self.mask is not None or self.alternate or self.reset):
      raise ValueError(f"{self.name}: a closed-form edit takes no mask and neither alternates nor resets")

  def options(self, **overrides) -> Options:
    """The `Options` this spec declares (mask, alternate, frozen, reset), with `overrides`."""
    return dataclasses.replace(Options(mask=self.mask, alternate=self.alternate, frozen=self.frozen,
                                       reset=self.reset), **overrides)

  @property
  def variants(self) -> str:
    """What a stage's `variant` selects (`methods.VARIANTS`), or "" without variants."""
    if self.variant_field is None:
      return ""
    return self.variant_doc or f"config.{self.variant_field}"
