r"""JAX vs PyTorch on the seed papers' class-conditional DDPM UNet: a training step, a SalUn
step and an EraseDiff step, interleaved in one process.

  python benchmarks/vs_pytorch.py                        # both sizes, every step
  python benchmarks/vs_pytorch.py --size=cpu --steps=plain,salun --repeats=20
  taskset -c 0 python benchmarks/vs_pytorch.py           # both frameworks on core 0 only
  python benchmarks/vs_pytorch.py --smoke                # a tiny UNet, 2 repeats: does it run

Sizes (`--size`): "cifar10" is the shared CIFAR-10 backbone (configs/dimum_cifar10.py,
configs/erasediff_cifar10.py: ch 128, ch_mult 1,2,2,2, 2 res blocks, attention at 16x16,
dropout 0.1, 32x32x3, 10 classes + the null class; batch 16 by default), "cpu" the same
configs' `:cpu` variant (ch 16, ch_mult 1,2, 1 res block, no attention; batch 64).

JAX side: the library's own step, `training.train_step` jitted with the state donated, built
as the stages build it: the pretraining objective (eps-MSE, condition dropout 0.1, EMA),
SalUn and EraseDiff from `unlearning.methods.build` on the config's unlearn stage (SalUn with
a random 50% mask const; EraseDiff's "rl" target, K = 2 inner steps, first-order grad g,
Theorem 3.1's lambda_t), each under `training.make_optimizer` (clip 1.0, Adam) at the stage's
learning rate.  PyTorch side: the same UNet written here in plain `torch.nn`, layer for layer
(its modules carry the Flax names, so the JAX initial weights load into it one to one and
both start from the same weights), and the same maths in eager PyTorch with
`torch.optim.Adam` (same lr, betas, eps) and `clip_grad_norm_`.  The parameter counts are
checked equal to the parameter, and (unless `--no-check`) both forwards are compared on
random weights.

Timing: per step kind, JAX `lower` and `compile` are timed separately (the compile-seconds
column is their sum), then each framework's first step (PyTorch's is its "compile" column),
`--warmup` more of each, then `--repeats` rounds of one JAX step (blocked until ready) and
one PyTorch step; the table gives the medians.  Images per step are batch x streams (1 for
plain training, 2 -- forget and retain, `--batch` each -- for SalUn and EraseDiff); "speed
JAX/torch" is PyTorch's step time over JAX's (> 1: JAX faster).

PyTorch options (the defaults are what a plain eager PyTorch program gets): `--channels-last`
(NHWC tensors and weights for oneDNN), `--torch-adam=foreach|fused`.  `--smoke` compiles JAX
without LLVM optimisation (as tests/run.sh does), so its timings mean nothing.

Threads: both frameworks get the cores of the process's CPU affinity mask (choose them with
`taskset`): PyTorch through `torch.set_num_threads(len(mask))`, XLA:CPU by default (its Eigen
intra-op pool has one thread per schedulable core; the run reports the `tf_XLAEigen` threads
it counted).  XLA_FLAGS is passed through and printed.

The last line is one JSON object.  PyTorch is the `[bench]` extra (`pip install -e ".[bench]"`,
torch==2.13.0 CPU); without it the script says so and exits with status 2.
"""
import argparse
import collections
import copy
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import time
from typing import Any

try:
  import torch
  import torch.nn.functional as F
  from torch import nn
except ImportError:
  if __name__ == "__main__":
    print('benchmarks/vs_pytorch.py needs PyTorch: pip install -e ".[bench]" (torch==2.13.0, CPU build)')
    sys.exit(2)
  raise

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from unlearn_jax import losses, models, settings, training  # noqa: E402
from unlearn_jax import sde as sde_lib  # noqa: E402
from unlearn_jax import train_state as ts  # noqa: E402
from unlearn_jax.experiment import stage_ema_rate  # noqa: E402
from unlearn_jax.models import layers  # noqa: E402
from unlearn_jax.unlearning import dimum as dimum_lib  # noqa: E402
from unlearn_jax.unlearning import methods  # noqa: E402
from unlearn_step import load_config  # noqa: E402

STEPS = ("plain", "salun", "erasediff")
#: size -> (config of the plain and SalUn steps, config of the EraseDiff step, default batch).
SIZES = {
    "cifar10": ("configs/dimum_cifar10.py", "configs/erasediff_cifar10.py", 16),
    "cpu": ("configs/dimum_cifar10.py:cpu", "configs/erasediff_cifar10.py:cpu", 64),
    # --smoke: the cpu configs with SMOKE_MODEL on SMOKE_IMAGE-pixel images
    "smoke": ("configs/dimum_cifar10.py:cpu", "configs/erasediff_cifar10.py:cpu", 2),
}
#: --smoke's UNet: small enough to compile in seconds, still with attention (at 4x4), a
#: down/up level pair and dropout.
SMOKE_MODEL = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)
SMOKE_IMAGE = 8
#: --smoke compiles without LLVM optimisation (as tests/run.sh does): its timings mean nothing.
SMOKE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
#: the config stage each step kind runs (its lr, EMA rate and method).
STAGE = {"plain": "pretrained", "salun": "salun", "erasediff": "erasediff_rl"}
#: --torch-adam: torch.optim.Adam's implementation ("default": the per-tensor loop on CPU tensors).
ADAM_IMPLS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


# ---------------------------------------------------------------------------------------------
# The UNet in PyTorch (unlearn_jax/models/ddpm_unet.py and layers.py, NCHW)
# ---------------------------------------------------------------------------------------------

def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  # stride 1: Flax's SAME is 1 pixel each side; stride 2: (0, 1), padded explicitly in Downsample.
  return nn.Conv2d(cin, cout, 3, stride=stride, padding=1 if stride == 1 else 0)


def _group_norm(c: int, groups: int) -> nn.GroupNorm:
  return nn.GroupNorm(layers.num_groups(c, groups), c, eps=1e-6)   # flax.linen.GroupNorm's epsilon


class TimeEmbedding(nn.Module):
  """layers.TimeEmbedding: Dense(swish(Dense(sinusoid(1000 tau))))."""

  def __init__(self, sin_dim: int, embed_dim: int):
    super().__init__()
    self.sin_dim = sin_dim
    half = sin_dim // 2
    freqs = torch.exp(-math.log(10000.0) / max(half - 1, 1) * torch.arange(half, dtype=torch.float32))
    self.register_buffer("freqs", freqs, persistent=False)
    self.Dense_0 = nn.Linear(sin_dim, embed_dim)
    self.Dense_1 = nn.Linear(embed_dim, embed_dim)

  def forward(self, tau):
    args = (1000.0 * tau)[:, None] * self.freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if self.sin_dim % 2:
      emb = F.pad(emb, (0, 1))
    return self.Dense_1(F.silu(self.Dense_0(emb)))


class ResnetBlock(nn.Module):
  """layers.ResnetBlock (DDPM++'s, skip rescaled by 1/sqrt 2)."""

  def __init__(self, cin: int, cout: int, embed_dim: int, groups: int, dropout: float):
    super().__init__()
    self.GroupNorm_0 = _group_norm(cin, groups)
    self.Conv_0 = _conv3x3(cin, cout)
    self.Dense_0 = nn.Linear(embed_dim, cout)
    self.GroupNorm_1 = _group_norm(cout, groups)
    self.dropout = nn.Dropout(dropout)
    self.Conv_1 = _conv3x3(cout, cout)
    self.Conv_2 = nn.Conv2d(cin, cout, 1) if cin != cout else None

  def forward(self, x, emb):
    h = self.Conv_0(F.silu(self.GroupNorm_0(x)))
    h = h + self.Dense_0(F.silu(emb))[:, :, None, None]
    h = self.Conv_1(self.dropout(F.silu(self.GroupNorm_1(h))))
    if self.Conv_2 is not None:
      x = self.Conv_2(x)
    return (x + h) / math.sqrt(2.0)


class AttnBlock(nn.Module):
  """layers.AttnBlock: single-head self-attention over H*W, written as the library's einsums."""

  def __init__(self, c: int, groups: int):
    super().__init__()
    self.GroupNorm_0 = _group_norm(c, groups)
    self.q, self.k, self.v, self.out = (nn.Linear(c, c) for _ in range(4))

  def forward(self, x):
    b, c, hh, ww = x.shape
    h = self.GroupNorm_0(x).reshape(b, c, hh * ww).transpose(1, 2)
    q, k, v = self.q(h), self.k(h), self.v(h)
    weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / math.sqrt(c), dim=-1)
    h = self.out(torch.bmm(weights, v))
    return (x + h.transpose(1, 2).reshape(b, c, hh, ww)) / math.sqrt(2.0)


class Downsample(nn.Module):
  def __init__(self, c: int, with_conv: bool):
    super().__init__()
    self.Conv_0 = _conv3x3(c, c, stride=2) if with_conv else None

  def forward(self, x):
    if self.Conv_0 is None:
      return F.avg_pool2d(x, 2)
    return self.Conv_0(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
  def __init__(self, c: int, with_conv: bool):
    super().__init__()
    self.Conv_0 = _conv3x3(c, c) if with_conv else None

  def forward(self, x):
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    return x if self.Conv_0 is None else self.Conv_0(x)


class TorchUNet(nn.Module):
  """ddpm_unet.UNet for NCHW images: the same layers in the same order, each submodule named
  as Flax names it (ResnetBlock_3.Conv_1, AttnBlock_0.q, ...), so `load_flax` maps the
  parameters one to one.  `forward(x, tau, labels)`; labels index K is the null class."""

  def __init__(self, cfg: models.UNetConfig):
    super().__init__()
    counters = collections.Counter()

    def add(kind, module):
      self.add_module(f"{kind}_{counters[kind]}", module)
      counters[kind] += 1
      return module

    ch, embed_dim, g = cfg.ch, cfg.ch * cfg.embed_dim_mult, cfg.groups
    self.time_embed = TimeEmbedding(ch, embed_dim)
    self.class_embed = nn.Embedding(cfg.num_classes + 1, embed_dim) if cfg.num_classes > 0 else None
    res_block = lambda cin, cout: add("ResnetBlock", ResnetBlock(cin, cout, embed_dim, g, cfg.dropout))
    attn_at = frozenset(cfg.attn_resolutions)
    plan = [("conv", add("Conv", _conv3x3(cfg.channels, ch))), ("push", None)]
    c, res, skips = ch, cfg.image_size, [ch]
    for level, mult in enumerate(cfg.ch_mult):
      for _ in range(cfg.num_res_blocks):
        plan.append(("res", res_block(c, ch * mult)))
        c = ch * mult
        if res in attn_at:
          plan.append(("attn", add("AttnBlock", AttnBlock(c, g))))
        plan.append(("push", None))
        skips.append(c)
      if level != len(cfg.ch_mult) - 1:
        plan += [("down", add("Downsample", Downsample(c, cfg.resamp_with_conv))), ("push", None)]
        skips.append(c)
        res //= 2
    plan.append(("res", res_block(c, c)))
    if attn_at:
      plan.append(("attn", add("AttnBlock", AttnBlock(c, g))))
    plan.append(("res", res_block(c, c)))
    for level in reversed(range(len(cfg.ch_mult))):
      for _ in range(cfg.num_res_blocks + 1):
        plan.append(("pop_res", res_block(c + skips.pop(), ch * cfg.ch_mult[level])))
        c = ch * cfg.ch_mult[level]
        if res in attn_at:
          plan.append(("attn", add("AttnBlock", AttnBlock(c, g))))
      if level != 0:
        plan.append(("up", add("Upsample", Upsample(c, cfg.resamp_with_conv))))
        res *= 2
    assert not skips, "unbalanced skip connections"
    self.GroupNorm_0 = _group_norm(c, g)
    self.conv_out = _conv3x3(c, cfg.channels)
    self.plan = plan           # a plain list: the modules are registered above
    self.num_classes = cfg.num_classes

  def forward(self, x, tau, labels=None):
    emb = self.time_embed(tau)
    if self.class_embed is not None:
      if labels is None:
        labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long)
      emb = emb + self.class_embed(labels)
    h, hs = x, []
    for op, module in self.plan:
      if op == "push":
        hs.append(h)
      elif op == "res":
        h = module(h, emb)
      elif op == "pop_res":
        h = module(torch.cat([h, hs.pop()], dim=1), emb)
      else:                         # conv, attn, down, up
        h = module(h)
    return self.conv_out(F.silu(self.GroupNorm_0(h)))


def flax_to_torch(tree, model: nn.Module) -> dict:
  """A Flax parameter-shaped tree (the params, or a mask like them) as `model`'s state dict:
  conv kernels HWIO -> OIHW, dense kernels transposed, GroupNorm scale -> weight."""
  out = {}

  def walk(node, path):
    leaves = {k: v for k, v in node.items() if not isinstance(v, dict)}
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, path + [k])
    if not leaves:
      return
    module = functools.reduce(getattr, path, model)
    prefix = ".".join(path)
    for name, value in leaves.items():
      a = np.asarray(value, np.float32)
      if isinstance(module, nn.Conv2d) and name == "kernel":
        key, a = "weight", a.transpose(3, 2, 0, 1)
      elif isinstance(module, nn.Linear) and name == "kernel":
        key, a = "weight", a.T
      elif isinstance(module, nn.GroupNorm) and name == "scale":
        key = "weight"
      elif isinstance(module, nn.Embedding) and name == "embedding":
        key = "weight"
      elif name == "bias":
        key = "bias"
      else:
        raise KeyError(f"no PyTorch counterpart of {prefix}/{name} ({type(module).__name__})")
      out[f"{prefix}.{key}"] = torch.from_numpy(np.array(a, np.float32, order="C"))

  walk(jax.device_get(tree), [])
  return out


def load_flax(model: nn.Module, params) -> None:
  """Copies the Flax params into `model` (strict: every tensor exactly once, shapes equal)."""
  model.load_state_dict(flax_to_torch(params, model), strict=True)


def count(tree) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(tree))


def torch_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def check_forward(module, model: TorchUNet, params, image_shape, num_classes: int, seed: int = 0) -> float:
  """max |JAX - PyTorch| / max |JAX| of the two forwards (eval mode) on random weights (the
  DDPM init zeroes every residual branch's last layer, which would hide most of the net)."""
  rng = np.random.default_rng(seed)

  def draw(path, p):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0, 1 / math.sqrt(np.prod(p.shape[:-1])), p.shape).astype(np.float32)
    if name == "scale":
      return (1 + 0.1 * rng.normal(size=p.shape)).astype(np.float32)
    return rng.normal(0, 1.0 if name == "embedding" else 0.1, p.shape).astype(np.float32)

  rand = jax.tree_util.tree_map_with_path(draw, jax.device_get(params))
  x = rng.normal(size=(2,) + tuple(image_shape)).astype(np.float32)
  tau = np.array([0.1, 0.7], np.float32)
  labels = np.array([1, num_classes], np.int32)
  want = np.asarray(jax.jit(lambda p, a, t, y: module.apply({"params": p}, a, t, y))(rand, x, tau, labels))
  twin = copy.deepcopy(model).eval()
  load_flax(twin, rand)
  with torch.no_grad():
    got = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(tau),
               torch.from_numpy(labels).long()).permute(0, 2, 3, 1).numpy()
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# ---------------------------------------------------------------------------------------------
# The steps
# ---------------------------------------------------------------------------------------------

def make_batches(kind: str, batch: int, shape, k: int, forget, seed: int = 0) -> dict:
  """Per-stream batches in [0, 1] (what `data.batch_at_step` yields): the plain step's "all"
  stream; SalUn's and EraseDiff's forget (labels: the forgotten classes) and retain streams."""
  rng = np.random.default_rng(seed)
  x = lambda: rng.random((batch,) + tuple(shape), dtype=np.float32)
  retained = np.array([c for c in range(k) if c not in forget])
  if kind == "plain":
    return {"all": {"x": x(), "labels": rng.integers(0, k, batch).astype(np.int32)}}
  return {"forget": {"x": x(), "labels": rng.choice(np.array(forget), batch).astype(np.int32)},
          "retain": {"x": x(), "labels": rng.choice(retained, batch).astype(np.int32)}}


class JaxStep:
  """The library's jitted step for `kind` on fixed batches, lowered (timed); `compile` compiles
  it (timed), then `__call__` runs one step."""

  def __init__(self, kind: str, cfg, module, params, batches, k: int, alt, mask):
    st = cfg.stages[STAGE[kind]]
    if kind == "plain":        # stages.train.objectives of a train stage
      denoise = functools.partial(losses.denoising_loss, reduce=cfg.training.reduce)
      objectives = {"retain": training.Objective("all", denoise, cond_drop=cfg.training.cond_drop)}
      method_tx, alternate = None, False
    else:
      objectives, method_tx, opts = methods.build(st.method, st.variant, settings.of(cfg), alt=alt, steps=st.steps,
                                                  forget=tuple(cfg.data.forget_classes), num_classes=k)
      alternate = opts.alternate
    self.lr = st.lr if st.lr is not None else cfg.optim.lr
    self.ema_rate = stage_ema_rate(cfg, st)
    self.tx = training.make_optimizer(self.lr, warmup=cfg.optim.warmup, grad_clip=cfg.optim.grad_clip,
                                      b1=cfg.optim.b1, eps=cfg.optim.eps, method=method_tx,
                                      decay=cfg.optim.decay, total_steps=st.steps, name=cfg.optim.name)
    apply = lambda v, x, t, l=None, train=False, rngs=None: module.apply(v, x, t, l, train=train, rngs=rngs)
    process = sde_lib.DDPMSchedule(N=cfg.sde.N, beta_start=cfg.sde.beta_start, beta_end=cfg.sde.beta_end)
    spec = training.StepSpec(apply_fn=apply, process=process, output_type=cfg.model.output,
                             objectives=objectives, weighting=cfg.training.weighting, ema_rate=self.ema_rate,
                             centered=cfg.data.centered, random_flip=cfg.data.random_flip, conditional=True,
                             null_label=k, alternate=alternate)
    self.streams = len(objectives)
    self.state = ts.create(jax.tree_util.tree_map(jnp.array, params), self.tx)
    self.batches = jax.device_put(batches)
    self.key = jax.random.key(0)
    self.consts = {"mask": jax.device_put(mask)} if kind == "salun" else {}
    step = jax.jit(functools.partial(training.train_step, spec=spec, tx=self.tx), donate_argnums=(0,))
    t0 = time.perf_counter()
    self.lowered = step.lower(self.state, self.batches, self.key, self.consts)
    self.lower_s = time.perf_counter() - t0

  def compile(self, compiler_options=None) -> "JaxStep":
    t0 = time.perf_counter()
    self.compiled = self.lowered.compile(compiler_options=compiler_options)
    self.compile_s = time.perf_counter() - t0
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.gflop = float(cost.get("flops", float("nan"))) / 1e9 if cost else float("nan")
    return self

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batches, self.key, self.consts)
    jax.block_until_ready((self.state, metrics))


class TorchStep:
  """The same step in eager PyTorch on the same batches, from the same initial weights.

  plain:     eps-MSE with condition dropout, clip, Adam, EMA;
  salun:     (grad MSE(eps(x_t, c_f), sg eps_eval(x_t, c')) + beta grad L_r) * mask, clip, Adam;
  erasediff: phi^K by K plain gradient steps on L_f from theta (the same dropout draw in every
             evaluation of L_f, as the library's fixed dropout key), grad g = grad L_f(theta) -
             grad L_f(phi^K), delta = grad L_r + lambda_t grad g (Theorem 3.1), clip, Adam.
  """

  def __init__(self, kind: str, cfg, model: TorchUNet, params, batches, k: int, alt, mask, lr: float,
               ema_rate: float, adam: str = "default", channels_last: bool = False):
    self.kind, self.cfg, self.k = kind, cfg, k
    self.model = model.train()
    load_flax(self.model, params)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    self.model.to(memory_format=layout)
    self.params = [p for p in self.model.parameters()]
    self.opt = torch.optim.Adam(self.params, lr=lr, betas=(cfg.optim.b1, 0.999), eps=cfg.optim.eps,
                                **ADAM_IMPLS[adam])
    self.clip = cfg.optim.grad_clip
    self.ema_rate = ema_rate
    self.ema = [p.detach().clone() for p in self.params] if ema_rate else None
    self.batches = {s: {"x": torch.from_numpy(b["x"].transpose(0, 3, 1, 2).copy()).contiguous(memory_format=layout),
                        "labels": torch.from_numpy(b["labels"]).long()} for s, b in batches.items()}
    self.alt = torch.from_numpy(np.asarray(alt)).long()
    abar = torch.from_numpy(sde_lib.DDPMSchedule(N=cfg.sde.N, beta_start=cfg.sde.beta_start,
                                                 beta_end=cfg.sde.beta_end).alphas_cumprod.astype(np.float32))
    self.sqrt_abar, self.sqrt_1m_abar, self.N = abar.sqrt(), (1 - abar).sqrt(), cfg.sde.N
    if kind == "salun":
      by_name = flax_to_torch(mask, self.model)
      self.mask = [by_name[n] for n, _ in self.model.named_parameters()]
      self.beta = cfg.salun.beta
    if kind == "erasediff":
      self.phi_model = copy.deepcopy(self.model)
      self.phi = list(self.phi_model.parameters())
      self.ed = cfg.erasediff
      if (self.ed.grad_form, self.ed.rule, self.ed.target) != ("first_order", "paper", "rl"):
        raise NotImplementedError("the PyTorch EraseDiff step is the first_order / paper / rl configuration")
    torch.manual_seed(0)

  def noised(self, stream: str):
    """(x_t, z, tau, labels): training.preprocess + perturb_examples for the DDPM schedule."""
    b = self.batches[stream]
    x0 = 2 * b["x"] - 1 if self.cfg.data.centered else b["x"]
    n = x0.shape[0]
    if self.cfg.data.random_flip:
      x0 = torch.where((torch.rand(n) < 0.5)[:, None, None, None], x0.flip(3), x0)
    t = torch.randint(0, self.N, (n,))
    z = torch.randn_like(x0)
    x_t = self.sqrt_abar[t][:, None, None, None] * x0 + self.sqrt_1m_abar[t][:, None, None, None] * z
    return x_t, z, t.float() / self.N, b["labels"]

  def target(self, x_t, tau, labels):
    """SalUn's / EraseDiff_rl's eps_theta(x_t, c') without gradient (train=False: no dropout)."""
    self.model.eval()
    with torch.no_grad():
      out = self.model(x_t, tau, self.alt[labels])
    self.model.train()
    return out

  def __call__(self):
    getattr(self, self.kind)()
    torch.nn.utils.clip_grad_norm_(self.params, self.clip)
    self.opt.step()
    if self.ema is not None:
      with torch.no_grad():
        torch._foreach_lerp_(self.ema, self.params, 1.0 - self.ema_rate)

  def plain(self):
    x_t, z, tau, labels = self.noised("all")
    drop = torch.rand(labels.shape[0]) < self.cfg.training.cond_drop
    labels = torch.where(drop, torch.full_like(labels, self.k), labels)
    self.opt.zero_grad(set_to_none=True)
    F.mse_loss(self.model(x_t, tau, labels), z).backward()

  def salun(self):
    self.opt.zero_grad(set_to_none=True)
    x_t, _, tau, labels = self.noised("forget")
    loss_f = F.mse_loss(self.model(x_t, tau, labels), self.target(x_t, tau, labels))
    x_r, z_r, tau_r, labels_r = self.noised("retain")
    loss_r = F.mse_loss(self.model(x_r, tau_r, labels_r), z_r)
    (loss_f + self.beta * loss_r).backward()
    torch._foreach_mul_([p.grad for p in self.params], self.mask)

  def erasediff(self):
    x_r, z_r, tau_r, labels_r = self.noised("retain")
    g_r = torch.autograd.grad(F.mse_loss(self.model(x_r, tau_r, labels_r), z_r), self.params)
    x_t, _, tau, labels = self.noised("forget")
    target = self.target(x_t, tau, labels)
    dropout_state = torch.get_rng_state()

    def grad_forget(model, params):
      torch.set_rng_state(dropout_state)
      return torch.autograd.grad(F.mse_loss(model(x_t, tau, labels), target), params)

    with torch.no_grad():
      torch._foreach_copy_(self.phi, self.params)
    for _ in range(self.ed.inner_steps):
      g = grad_forget(self.phi_model, self.phi)
      with torch.no_grad():
        torch._foreach_add_(self.phi, g, alpha=-self.ed.inner_lr)
    g_f = torch._foreach_sub(grad_forget(self.model, self.params), grad_forget(self.phi_model, self.phi))
    dot = sum(torch.vdot(a.flatten(), b.flatten()) for a, b in zip(g_f, g_r))
    gg = sum(torch.vdot(a.flatten(), a.flatten()) for a in g_f)
    lam = torch.where(gg > 0, torch.clamp((self.ed.eta * gg - dot) / torch.clamp(gg, min=1e-30), min=0.0),
                      torch.zeros(()))
    for p, r, f in zip(self.params, g_r, g_f):
      p.grad = r + lam * f


def eigen_threads() -> int:
  """The XLA:CPU Eigen intra-op threads alive in this process (Linux; -1 elsewhere)."""
  try:
    tasks = os.listdir("/proc/self/task")
  except OSError:
    return -1
  n = 0
  for tid in tasks:
    try:
      with open(f"/proc/self/task/{tid}/comm") as f:
        n += f.read().startswith("tf_XLAEigen")
    except OSError:
      pass
  return n


@dataclasses.dataclass
class Size:
  """One model size: the config of each step kind, the Flax module and its typed config, the
  image shape, the class count K, the initial weights (host) and SalUn's random 50% mask."""
  name: str
  cfgs: dict
  module: Any
  typed: models.UNetConfig
  shape: tuple
  k: int
  params: Any = None
  mask: Any = None


def build_size(size: str, init: bool = True) -> Size:
  """The configs and model of `size`; with `init`, the library's initial weights and the mask."""
  plain_cfg, ed_cfg, _ = SIZES[size]
  cfgs = {}
  for kind, path in (("plain", plain_cfg), ("salun", plain_cfg), ("erasediff", ed_cfg)):
    c = load_config(path)
    if size == "smoke":
      c.model.update(SMOKE_MODEL)
      c.data.image_size = SMOKE_IMAGE
    cfgs[kind] = c
  c = cfgs["plain"]
  shape = (c.data.image_size, c.data.image_size, c.data.num_channels)
  k = 10
  module, typed = models.build_model(c.model, shape, k)
  sz = Size(size, cfgs, module, typed, shape, k)
  if init:
    sz.params = jax.device_get(models.init_params(module, jax.random.key(0), shape, conditional=True))
    rng = np.random.default_rng(1)
    sz.mask = jax.tree_util.tree_map(lambda p: (rng.random(p.shape) < 0.5).astype(np.float32), sz.params)
  return sz


def build_steps(sz: Size, kind: str, batch: int, adam: str = "default", channels_last: bool = False):
  """(JaxStep, lowered not compiled; TorchStep) of `kind` on the same batches and weights."""
  cfg = sz.cfgs[kind]
  forget = tuple(int(c) for c in cfg.data.forget_classes)
  alt = dimum_lib.alternative_classes(sz.k, forget, cfg.unlearn.alternative, seed=cfg.seed)
  batches = make_batches(kind, batch, sz.shape, sz.k, forget)
  j = JaxStep(kind, cfg, sz.module, sz.params, batches, sz.k, alt, sz.mask)
  t = TorchStep(kind, cfg, TorchUNet(sz.typed), sz.params, batches, sz.k, alt, sz.mask, j.lr, j.ema_rate,
                adam, channels_last)
  return j, t


def run_size(size: str, args) -> list:
  sz = build_size(size)
  batch = args.batch or SIZES[size][2]
  n_jax, n_torch = count(sz.params), torch_count(TorchUNet(sz.typed))
  print(f"[{size}] parameters: JAX {n_jax:,}, PyTorch {n_torch:,}", flush=True)
  assert n_jax == n_torch, f"parameter counts differ: JAX {n_jax:,} vs PyTorch {n_torch:,}"
  rel_err = None
  if args.check:
    rel_err = check_forward(sz.module, TorchUNet(sz.typed), sz.params, sz.shape, sz.k)
    print(f"[{size}] forward on random weights: max |JAX - PyTorch| / max |JAX| = {rel_err:.2e}", flush=True)
    assert rel_err < 1e-4, f"the two UNets disagree (relative error {rel_err:.2e})"
  rows = []
  for kind in args.steps.split(","):
    j, t = build_steps(sz, kind, batch, args.torch_adam, args.channels_last)
    j.compile(SMOKE_COMPILER_OPTIONS if size == "smoke" else None)
    t0 = time.perf_counter()
    j()
    j_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    t()
    t_first = time.perf_counter() - t0
    for _ in range(args.warmup):
      j()
      t()
    jt, tt = [], []
    for _ in range(args.repeats):          # interleaved: drift hits both frameworks alike
      t0 = time.perf_counter()
      j()
      jt.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      t()
      tt.append(time.perf_counter() - t0)
    jm, tm = statistics.median(jt), statistics.median(tt)
    images = batch * j.streams
    row = {"size": size, "step": kind, "params": n_jax, "torch_params": n_torch, "batch": batch,
           "streams": j.streams, "jax_ms": round(1e3 * jm, 2), "torch_ms": round(1e3 * tm, 2),
           "jax_img_s": round(images / jm, 2), "torch_img_s": round(images / tm, 2),
           "speed_jax_over_torch": round(tm / jm, 3),
           "jax_compile_s": round(j.lower_s + j.compile_s, 2), "jax_lower_s": round(j.lower_s, 2),
           "jax_xla_compile_s": round(j.compile_s, 2), "jax_first_step_s": round(j_first, 3),
           "torch_first_step_s": round(t_first, 3), "jax_gflop_per_step": round(j.gflop, 3),
           "jax_ms_all": [round(1e3 * v, 2) for v in jt], "torch_ms_all": [round(1e3 * v, 2) for v in tt],
           "lr": j.lr, "ema_rate": j.ema_rate, "forward_rel_err": rel_err, "jax_eigen_threads": eigen_threads()}
    rows.append(row)
    print(f"[{size}] {kind}: JAX {row['jax_ms']} ms, PyTorch {row['torch_ms']} ms "
          f"(compile {row['jax_compile_s']} s, PyTorch first step {row['torch_first_step_s']} s)", flush=True)
    del j, t
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="cifar10,cpu", help="comma-separated: cifar10, cpu (smoke: see --smoke)")
  p.add_argument("--steps", default=",".join(STEPS), help="comma-separated: plain, salun, erasediff")
  p.add_argument("--batch", type=int, default=0, help="per stream; 0: 16 (cifar10), 64 (cpu)")
  p.add_argument("--repeats", type=int, default=0, help="timed rounds per step (0: 5; --smoke: 2)")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps of each after the first")
  p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                 help="compare the two forwards on random weights first")
  p.add_argument("--torch-adam", default="default", choices=tuple(ADAM_IMPLS),
                 help="torch.optim.Adam's implementation (default: what PyTorch picks for CPU tensors)")
  p.add_argument("--channels-last", action="store_true", help="PyTorch in channels_last memory format (NHWC)")
  p.add_argument("--smoke", action="store_true", help="--size=smoke: a tiny UNet on 8x8 images, batch 2, 2 repeats")
  args = p.parse_args()
  args.repeats = args.repeats or (2 if args.smoke else 5)
  for s in args.steps.split(","):
    if s not in STEPS:
      p.error(f"--steps: {s!r} is not one of {', '.join(STEPS)}")
  sizes = ["smoke"] if args.smoke else args.size.split(",")
  for s in sizes:
    if s not in SIZES:
      p.error(f"--size: {s!r} is not one of {', '.join(SIZES)}")

  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
  torch.set_num_threads(len(cores))
  rows = []
  for size in sizes:
    rows += run_size(size, args)
  threads = {"cores": cores, "torch_num_threads": torch.get_num_threads(),
             "torch_interop_threads": torch.get_num_interop_threads(),
             "torch_mkldnn": torch.backends.mkldnn.is_available(),
             "jax_eigen_threads": eigen_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "torch_adam": args.torch_adam, "torch_channels_last": args.channels_last}
  device = jax.devices()[0].device_kind
  print(f"\ndevice: {device}; cores {cores}; PyTorch {torch.__version__} eager "
        f"({'channels_last' if args.channels_last else 'NCHW'}, Adam {args.torch_adam}), "
        f"torch.set_num_threads({threads['torch_num_threads']}), interop {threads['torch_interop_threads']}, "
        f"oneDNN {'on' if threads['torch_mkldnn'] else 'off'}; jax {jax.__version__}, XLA:CPU Eigen threads "
        f"{threads['jax_eigen_threads']}, XLA_FLAGS={threads['xla_flags']!r}")
  print(f"fp32; medians of {args.repeats} interleaved repeats; img/s = batch x streams / step time; "
        f"speed JAX/torch = torch ms / JAX ms" + ("; SMOKE (tiny UNet)" if args.smoke else ""))
  head = ("size", "step", "params", "batch", "JAX ms", "torch ms", "JAX img/s", "torch img/s",
          "speed JAX/torch", "JAX compile s", "torch 1st step s")
  keys = ("size", "step", "params", "batch", "jax_ms", "torch_ms", "jax_img_s", "torch_img_s",
          "speed_jax_over_torch", "jax_compile_s", "torch_first_step_s")
  print("| " + " | ".join(head) + " |")
  print("|" + "|".join("---" for _ in head) + "|")
  for r in rows:
    print("| " + " | ".join(f"{r[k]:,}" if k == "params" else str(r[k]) for k in keys) + " |")
  print(json.dumps({"benchmark": "vs_pytorch", "device": device, "jax": jax.__version__,
                    "torch": torch.__version__, "smoke": args.smoke, "repeats": args.repeats,
                    "warmup": args.warmup, "threads": threads, "rows": rows}))


if __name__ == "__main__":
  main()
