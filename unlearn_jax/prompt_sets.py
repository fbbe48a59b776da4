"""Prompt lists of the prompt-only forgetting experiments (`tasks.prompts`): I2P CSVs and
COCO-style caption files a user has, and the small caption list bundled for CPU runs.

    rows = read_i2p_csv(path, categories=("sexual",))   # I2PPrompt(prompt, categories, seed, guidance)
    captions = read_captions(path)                       # Caption(prompt, seed or None)

I2P (Schramowski et al. 2023, "Safe Latent Diffusion") is a CSV of 4,703 prompts with the
columns `prompt`, `categories` (a comma-separated subset of hate, harassment, violence,
self-harm, sexual, shocking, illegal activity), the seed and guidance scale its images were
made with, `sd_seed` and `sd_guidance_scale`, and more.  The copy ESD, UCE, SalUn and
EraseDiff evaluate (`unsafe-prompts4703.csv`) adds `evaluation_seed` and
`evaluation_guidance`.  Which pair an experiment reads is a choice the papers leave to their
scripts: `seed_column` / `guidance_column` name it, "" (the default) takes `evaluation_*`
where the file has it, else `sd_*`.  A guidance *scale* g of the file is SD's: the
library's guidance weight is w = g - 1 (eps = (1 + w) eps_c - w eps_null).

A caption file is plain text, one caption per line, or a CSV with a `prompt` (or
`caption` / `text`) column and optionally `evaluation_seed` (or `seed`), the layout of the
papers' `coco_30k.csv`.  `BUNDLED_CAPTIONS` (name "bundled") are 8 captions written for this
library in the style of COCO's: a smoke-test list, not COCO.

Every problem with a user's file is a `UserError` naming the config field, the file and
what is missing, raised before anything is written.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

from unlearn_jax.errors import UserError

#: I2P's categories (the `categories` column's vocabulary).
I2P_CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal activity")
#: the seed / guidance columns, in the order "" (auto) tries them.
SEED_COLUMNS = ("evaluation_seed", "sd_seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance_scale")
#: `config.eval.coco_prompts` naming the bundled list.
BUNDLED = "bundled"
#: a few captions in COCO's style, written for the CPU smoke runs (not COCO's).
BUNDLED_CAPTIONS: Tuple[str, ...] = (
    "a dog sitting on a wooden bench in a park",
    "two cats sleeping on a red sofa",
    "a church tower under a cloudy sky",
    "a garbage truck parked on a city street",
    "a photo of a bowl of fruit on a kitchen table",
    "an airplane flying over the sea at sunset",
    "a person wearing clothes walking in the rain",
    "a golf ball on green grass next to a flag",
)
_CAPTION_COLUMNS = ("prompt", "caption", "text")
_CAPTION_SEEDS = ("evaluation_seed", "seed")


@dataclasses.dataclass(frozen=True)
class I2PPrompt:
  """One I2P row: the prompt, its categories, and the seed / guidance scale of its image."""
  prompt: str
  categories: Tuple[str, ...]
  seed: int
  guidance_scale: float


@dataclasses.dataclass(frozen=True)
class Caption:
  """One caption and, where the file gives one, its seed."""
  prompt: str
  seed: Optional[int] = None


def _read_rows(path: str, field: str) -> Tuple[List[str], List[dict]]:
  if not path or not os.path.isfile(path):
    raise UserError(field, path, "expected an existing CSV file")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      columns = [c.strip() for c in (reader.fieldnames or [])]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise UserError(field, path, f"not a readable CSV file ({type(e).__name__}: {e})") from None
  rows = [{(k or "").strip(): (v if isinstance(v, str) else "") for k, v in r.items()} for r in rows]
  return columns, rows


def _pick(columns: Sequence[str], want: str, auto: Sequence[str], path: str, field: str, what: str) -> str:
  if want:
    if want not in columns:
      raise UserError(field, want, f"the I2P file {path} has no column {want!r} (its columns: "
                      f"{', '.join(columns)})")
    return want
  for c in auto:
    if c in columns:
      return c
  raise UserError("config.data.i2p_csv", path, f"has no {what} column ({' or '.join(auto)}; its columns: "
                  f"{', '.join(columns)})")


def split_categories(text: str) -> Tuple[str, ...]:
  """I2P's `categories` cell ("sexual, violence") as lower-case names."""
  return tuple(c.strip().lower() for c in str(text or "").split(",") if c.strip())


def read_i2p_csv(path: str, *, categories: Sequence[str] = (), seed_column: str = "",
                 guidance_column: str = "", max_prompts: int = 0) -> List[I2PPrompt]:
  """The rows of an I2P-style CSV, in file order.

  Args:
    path: the CSV (`config.data.i2p_csv`).
    categories: keep the rows with at least one of these categories (case-insensitive);
      empty keeps every row (the 4,703 prompts the papers' Fig. / Table counts are over).
    seed_column, guidance_column: the columns to read ("": `evaluation_*`, else `sd_*`).
    max_prompts: keep the first this many rows after filtering (0: all).
  Raises:
    UserError naming `config.data.i2p_csv` and the file: missing or unreadable, no `prompt` /
    `categories` / seed / guidance column, a seed that is not an integer or a guidance scale
    that is not a number (with its row number), or no row left after the filter
    (`config.data.i2p_categories`).
  """
  field = "config.data.i2p_csv"
  columns, rows = _read_rows(path, field)
  for need in ("prompt", "categories"):
    if need not in columns:
      raise UserError(field, path, f"has no column {need!r} (its columns: {', '.join(columns) or 'none'}); "
                      "expected I2P's columns prompt, categories, sd_seed (or evaluation_seed), "
                      "sd_guidance_scale (or evaluation_guidance)")
  seed_col = _pick(columns, seed_column, SEED_COLUMNS, path, "config.data.i2p_seed_column", "seed")
  guidance_col = _pick(columns, guidance_column, GUIDANCE_COLUMNS, path, "config.data.i2p_guidance_column",
                       "guidance")
  wanted = {c.strip().lower() for c in categories if str(c).strip()}
  out = []
  for i, r in enumerate(rows, start=2):               # row 1 is the header
    cats = split_categories(r.get("categories", ""))
    if wanted and not wanted.intersection(cats):
      continue
    try:
      seed = int(float(r[seed_col]))
      if float(r[seed_col]) != seed:
        raise ValueError(r[seed_col])
    except (TypeError, ValueError):
      raise UserError(field, path, f"row {i}: {seed_col}={r.get(seed_col)!r} is not an integer seed") from None
    try:
      scale = float(r[guidance_col])
    except (TypeError, ValueError):
      raise UserError(field, path, f"row {i}: {guidance_col}={r.get(guidance_col)!r} is not a number") from None
    out.append(I2PPrompt(prompt=r["prompt"].strip(), categories=cats, seed=seed, guidance_scale=scale))
    if max_prompts and len(out) >= max_prompts:
      break
  if not out:
    raise UserError("config.data.i2p_categories", tuple(categories),
                    f"no row of {path} has one of these categories (I2P's: {', '.join(I2P_CATEGORIES)})")
  return out


def read_captions(path: str, *, field: str = "config.eval.coco_prompts", max_prompts: int = 0) -> List[Caption]:
  """The captions of a text file (one a line, blank lines skipped) or a CSV with a `prompt` /
  `caption` / `text` column (and optionally `evaluation_seed` / `seed`); "bundled" is
  `BUNDLED_CAPTIONS`.  `max_prompts` keeps the first this many (0: all)."""
  if path == BUNDLED:
    caps = [Caption(p) for p in BUNDLED_CAPTIONS]
  elif path.lower().endswith(".csv"):
    columns, rows = _read_rows(path, field)
    col = next((c for c in _CAPTION_COLUMNS if c in columns), None)
    if col is None:
      raise UserError(field, path, f"has no caption column ({' or '.join(_CAPTION_COLUMNS)}; its columns: "
                      f"{', '.join(columns) or 'none'})")
    seed_col = next((c for c in _CAPTION_SEEDS if c in columns), None)
    caps = []
    for i, r in enumerate(rows, start=2):
      seed = None
      if seed_col and str(r.get(seed_col, "")).strip():
        try:
          seed = int(float(r[seed_col]))
        except ValueError:
          raise UserError(field, path, f"row {i}: {seed_col}={r[seed_col]!r} is not an integer seed") from None
      if str(r.get(col, "")).strip():
        caps.append(Caption(r[col].strip(), seed))
  else:
    if not path or not os.path.isfile(path):
      raise UserError(field, path, f"expected '{BUNDLED}', a text file with one caption a line, or a CSV "
                      "with a prompt column")
    try:
      with open(path, encoding="utf-8-sig") as f:
        caps = [Caption(line.strip()) for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(field, path, f"not a readable text file ({type(e).__name__})") from None
  if not caps:
    raise UserError(field, path, "holds no caption")
  return caps[:max_prompts] if max_prompts else caps
