"""``PruningSettings``: the one record of what defines a pruning problem for a base model.

The search, the environment, the baselines, ``prune`` and ``evaluate`` all read these settings from
one object, and a policy directory stores it whole (``policy.json`` key ``settings``), so a policy is
queried under exactly the rules it was searched under.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any

from autoprune.errors import AutopruneError

# What ran before a setting existed, where its default has changed since: a record without the field
# was scored this way.
BEFORE_THE_FIELD: dict[str, Any] = {"proxy": "bn", "proxy_measure": "accuracy"}


@dataclass(frozen=True)
class PruningSettings:
    """How strategies are built and scored (see ``ChannelPruningEnv`` for what each rule does).

    - ``criterion``: channel importance criterion (``autoprune criteria``); which channels a keep
      ratio removes within a group.
    - ``min_keep``: smallest keep ratio an action maps to.
    - ``tolerance``: how far below the target a strategy may end before the budget fill.
    - ``round_to``: keep channel counts that are multiples of this (1: any count).
    - ``action_mode``: how an action in [-1, 1] maps to a keep ratio (``ACTION_MODES``).
    - ``prior``: where an ``offset`` action of 0 lands (``PRIORS``).
    - ``fill_budget``: spend what the action wall leaves of the budget.
    - ``reward``: the episode's reward (``REWARDS``).
    - ``proxy``: how a strategy is scored (``autoprune.task.proxy.PROXIES``): ``recon`` (least-squares
      reconstruction, scored with the base model's BN statistics; the default), ``bn`` (adaptive BN),
      ``recon-bn`` (reconstruction, then adaptive BN), ``distill`` (distillation steps towards the base
      model after adaptive BN), ``recon-distill`` (reconstruction, then as ``distill``).
    - ``proxy_measure``: what the proxy reports of the validation predictions
      (``autoprune.task.proxy.MEASURES``): ``kl`` (exp(-KL) of the base model's outputs to the pruned
      model's; the default), ``accuracy`` (top-1) or ``soft`` (mean probability of the true label). The
      value the proxy reports, in [0, 1], is what records and progress call "proxy accuracy" whichever
      measure made it.
    - ``proxy_images``: validation images the proxy scores, at most (the whole split where it holds
      fewer; None: all of it).
    - ``proxy_steps``: SGD steps on training batches before the proxy scores a strategy (``bn``:
      cross-entropy steps, 0 by default; ``distill`` variants: distillation steps, 0 meaning their default).
    - ``adaptive_bn``: re-estimate BN statistics before scoring; ``calib_batches`` training batches for it.
    - ``reconstruct``: calibration images for least-squares reconstruction of the layers after the
      removed channels (``PruningSpace.apply(reconstruct=...)``), for the proxy and every pruned model
      the task builds; 0: off (the ``recon`` proxies still reconstruct the models they score, on
      ``RECONSTRUCT_IMAGES`` images).
    - ``observation``: what the agent sees of a group (``OBSERVATIONS``): ``layer`` (normalised within
      the model, AMC's embedding) or ``transferable`` (the same meaning on any architecture).

    The default proxy (``recon``, ``kl``, 2,000 images) is the one that ranked 60 competitive ResNet-20
    strategies most like their fine-tuned accuracy within 3x the cost of adaptive BN on 1,000 images
    (docs/RESULTS.md). Records written before a setting existed read it as it was then
    (``BEFORE_THE_FIELD``), not as today's default.
    """

    criterion: str = "l1"
    min_keep: float = 0.1
    tolerance: float = 0.02
    round_to: int = 1
    action_mode: str = "offset"
    prior: str = "global"
    fill_budget: bool = True
    reward: str = "relative"
    proxy_images: int | None = 2000
    proxy_steps: int = 0
    adaptive_bn: bool = True
    calib_batches: int = 4
    observation: str = "layer"
    reconstruct: int = 0
    proxy: str = "recon"
    proxy_measure: str = "kl"

    def __post_init__(self) -> None:
        from autoprune.pruning import list_criteria
        from autoprune.task.episode import ACTION_MODES, PRIORS
        from autoprune.task.observation import OBSERVATIONS
        from autoprune.task.proxy import MEASURES, PROXIES
        from autoprune.task.rewards import REWARDS

        for value, registry, what in ((self.criterion, list_criteria(), "criterion"),
                                      (self.action_mode, ACTION_MODES.names(), "action mode"),
                                      (self.prior, PRIORS.names(), "prior"), (self.reward, REWARDS.names(), "reward"),
                                      (self.observation, OBSERVATIONS.names(), "observation"),
                                      (self.proxy, PROXIES.names(), "proxy"),
                                      (self.proxy_measure, MEASURES.names(), "proxy measure")):
            if value not in registry:
                raise AutopruneError(f"unknown {what} {value!r}; choose one of {', '.join(registry)}")
        if not 0 < self.min_keep <= 1:
            raise AutopruneError(f"min_keep must be in (0, 1], got {self.min_keep}")
        if not 0 <= self.tolerance < 1:
            raise AutopruneError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if int(self.round_to) < 1:
            raise AutopruneError(f"round_to must be >= 1, got {self.round_to}")
        if self.proxy_steps < 0:
            raise AutopruneError(f"proxy_steps must be >= 0, got {self.proxy_steps}")
        if self.reconstruct < 0:
            raise AutopruneError(f"reconstruct must be >= 0 calibration images, got {self.reconstruct}")
        if self.calib_batches < 1:
            raise AutopruneError(f"calib_batches must be >= 1, got {self.calib_batches}")

    def replace(self, **changes: Any) -> PruningSettings:
        """A copy with ``changes``; None values leave a setting as it is (handy for optional CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PruningSettings:
        """Read a stored record; a setting added after it was written reads as the value that ran then
        (``BEFORE_THE_FIELD``) or, for the others, as its default."""
        known = {f.name for f in fields(cls)}
        return cls(**{**BEFORE_THE_FIELD, **{k: v for k, v in values.items() if k in known}})

    @classmethod
    def normalized(cls, record: dict[str, Any]) -> dict[str, Any]:
        """A stored record as today's settings write it (settings added since read as their defaults),
        so a run saved before a setting existed still compares equal when resumed under the defaults."""
        return cls.from_dict(record).to_dict()

    @classmethod
    def from_policy_meta(cls, meta: dict[str, Any]) -> PruningSettings:
        """The settings of a policy directory's ``policy.json``, including those written before the
        record existed: their settings sat at the top level, and a policy saved before an option
        existed ran without it (no budget fill, a uniform prior, AMC's absolute actions)."""
        if "settings" in meta:
            return cls.from_dict(meta["settings"])
        legacy = {"fill_budget": False, "prior": "uniform", "action_mode": "absolute", **BEFORE_THE_FIELD}
        values = {f.name: meta.get(f.name, legacy.get(f.name, f.default)) for f in fields(cls)}
        values["proxy_steps"] = meta.get("proxy_finetune_steps", 0)
        return cls(**values)
