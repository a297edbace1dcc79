"""Training schedules: DFC weight/shift decay and FPS sample-count decay, kept apart from the config.

The release decays the DFC weight and shift, and shrinks the sample grid S, by mutating the shared config object,
so a checkpoint's saved config holds already-decayed values (METHOD.md §3.5, §9 #25). Here the hyper-parameters
stay immutable (:class:`Schedule`) and what changes lives in a small :class:`ScheduleState` that is saved with
the checkpoint.

Rules (DG src/train_segmentation.py:356-375), applied after iteration ``it``'s loss, effective from ``it + 1``,
with ``gs`` the step counter of the chosen unit:
* DFC:  if depth_loss_decay and gs % decay_every == 0 and gs > 0: weight *= factor, and shift *= factor unless
  fix_depth_feat_shift.
* FPS:  if fps_sample_decay and gs % fps_every == 0: S <- max(floor(S * factor), fps_min_samples). The release
  has no gs > 0 guard here, so with ``step_unit="reference"`` it also fires at gs = 0 (the authors' "ViT-S starts
  at 9 instead of 11"); ``step_unit="paper"`` does not.

Step unit (DESIGN.md §3, METHOD.md §2.4): ``"paper"`` counts iterations, gs = it; ``"reference"`` counts the
legacy Lightning global step, which advances by 3 per iteration (three optimisers), gs = 3 * it. Periods
(decay_every, fps_every) and max_steps are in that unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from depthg.config import ScheduleConfig
from depthg.errors import ConfigError, TrainingError

STEP_UNITS = {"paper": 1, "reference": 3}


def steps_per_iteration(step_unit: str) -> int:
    """Global steps per training iteration: 1 (paper, iterations) or 3 (reference, PL 2.0.1 global steps)."""
    if step_unit not in STEP_UNITS:
        raise ConfigError(f"step_unit={step_unit!r} is not one of {tuple(STEP_UNITS)}.")
    return STEP_UNITS[step_unit]


def num_iterations(max_steps: int, *, step_unit: str) -> int:
    """Iterations a run of ``max_steps`` lasts: the release's 7000 legacy steps are ceil(7000/3) = 2334."""
    return math.ceil(max_steps / steps_per_iteration(step_unit))


@dataclass(frozen=True)
class Schedule:
    """Immutable schedule hyper-parameters: the starting DFC weight, shift and sample count (config ``loss``), the
    step unit (``fidelity.step_unit``) and the decay rules, which are the config's own :class:`ScheduleConfig`
    (METHOD.md §7.2), not a copy of its fields."""

    dfc_weight: float
    dfc_shift: float
    samples: int
    step_unit: str = "reference"
    rules: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        steps_per_iteration(self.step_unit)
        for name in ("decay_every_steps", "fps_sample_decay_every_steps"):
            if getattr(self.rules, name) <= 0:
                raise ConfigError(f"schedule.{name}={getattr(self.rules, name)} must be a positive number of steps.")
        if self.samples < 1:
            raise ConfigError(f"loss.feature_samples={self.samples} must be >= 1.")

    def start(self) -> ScheduleState:
        """The state before iteration 0."""
        return ScheduleState(self)

    def dfc_fires(self, iteration: int) -> bool:
        """Whether the DFC decay fires after ``iteration``'s loss."""
        gs = iteration * steps_per_iteration(self.step_unit)
        return self.rules.depth_loss_decay and gs > 0 and gs % self.rules.decay_every_steps == 0

    def fps_fires(self, iteration: int) -> bool:
        """Whether the sample-count decay fires after ``iteration``'s loss (reference: at gs = 0 too)."""
        gs = iteration * steps_per_iteration(self.step_unit)
        at_zero_ok = self.step_unit == "reference"
        return (
            self.rules.fps_sample_decay and (gs > 0 or at_zero_ok) and gs % self.rules.fps_sample_decay_every_steps == 0
        )

    def shrink(self, samples: int) -> int:
        """One sample-count decay step; int() truncates like the release, float error included (10*0.9 -> 9)."""
        return max(int(samples * self.rules.fps_sample_decay_factor), self.rules.fps_min_samples)

    def _fired_before(self, iteration: int, every: int, include_zero: bool) -> int:
        """How many decays of period ``every`` (steps) fired after iterations 0..iteration-1."""
        if iteration <= 0:
            return 0
        # 3*it % every == 0  <=>  it is a multiple of every / gcd(every, 3)
        period = every // math.gcd(every, steps_per_iteration(self.step_unit))
        return (iteration - 1) // period + (1 if include_zero else 0)

    def at(self, iteration: int) -> tuple[float, float, int]:
        """Closed form: (dfc_weight, dfc_shift, samples) used by the loss of ``iteration`` (METHOD.md §3.5)."""
        n_dfc = self._fired_before(iteration, self.rules.decay_every_steps, False) if self.rules.depth_loss_decay else 0
        gamma = self.rules.depth_loss_decay_factor**n_dfc
        shift = self.dfc_shift if self.rules.fix_depth_feat_shift else self.dfc_shift * gamma
        samples = self.samples
        if self.rules.fps_sample_decay:
            for _ in range(
                self._fired_before(iteration, self.rules.fps_sample_decay_every_steps, self.step_unit == "reference")
            ):
                samples = self.shrink(samples)
        return self.dfc_weight * gamma, shift, samples


@dataclass
class ScheduleState:
    """What changes during training: the iteration about to run and the values its loss uses."""

    schedule: Schedule
    iteration: int = 0
    dfc_weight: float | None = field(default=None)
    dfc_shift: float | None = field(default=None)
    samples: int | None = field(default=None)

    def __post_init__(self) -> None:
        if self.dfc_weight is None:
            self.dfc_weight, self.dfc_shift, self.samples = (
                self.schedule.dfc_weight,
                self.schedule.dfc_shift,
                self.schedule.samples,
            )

    def advance(self) -> ScheduleState:
        """Apply the decays due after the current iteration's loss and move to the next iteration."""
        s = self.schedule
        if s.dfc_fires(self.iteration):
            self.dfc_weight *= s.rules.depth_loss_decay_factor
            if not s.rules.fix_depth_feat_shift:
                self.dfc_shift *= s.rules.depth_loss_decay_factor
        if s.fps_fires(self.iteration):
            self.samples = s.shrink(self.samples)
        self.iteration += 1
        return self

    def state_dict(self) -> dict[str, float | int]:
        """Plain values for a checkpoint."""
        return {
            "iteration": self.iteration,
            "dfc_weight": self.dfc_weight,
            "dfc_shift": self.dfc_shift,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (resume)."""
        missing = {"iteration", "dfc_weight", "dfc_shift", "samples"} - set(state)
        if missing:
            raise TrainingError(f"checkpoint schedule state lacks {sorted(missing)}; it was not written by depthg.")
        self.iteration = int(state["iteration"])
        self.dfc_weight = float(state["dfc_weight"])
        self.dfc_shift = float(state["dfc_shift"])
        self.samples = int(state["samples"])
