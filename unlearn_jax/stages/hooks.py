"""What a caller of `pipeline.run` may observe while the stages run."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional


@dataclasses.dataclass(frozen=True)
class Hooks:
  """step(n): called after every optimisation step / written chunk of a stage (tests use it
  to kill a run at a given step)."""
  step: Optional[Callable[[int], None]] = None
