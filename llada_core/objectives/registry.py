"""Every objective the trainer can run, by `kind`. A new objective is one module that defines
`OBJECTIVE` (an `Objective` subclass with its `Config`) plus its name in `MODULES`."""

from __future__ import annotations

import functools
import importlib
import operator
from typing import Annotated

from pydantic import Field

from llada_core.objectives.base import Objective

MODULES = ("ar", "block_diffusion", "sft", "cap", "dpo")

OBJECTIVES: dict[str, type[Objective]] = {
    o.kind: o for o in (importlib.import_module(f"llada_core.objectives.{m}").OBJECTIVE for m in MODULES)}

# The `objective:` key of a stage config: one of the objectives' configs, chosen by its `kind`.
ObjectiveConfig = Annotated[functools.reduce(operator.or_, (o.Config for o in OBJECTIVES.values())),
                            Field(discriminator="kind")]


def objective_class(cfg) -> type[Objective]:
    return OBJECTIVES[cfg.kind]


def build_objective(cfg) -> Objective:
    return OBJECTIVES[cfg.kind](cfg)
