"""The Trainer callbacks of a distillation run, and its multi-step learning-rate schedule.

Everything here watches or steers a run without touching the loss: the run plan and its time estimate,
the augmentation epoch, the teacher cache's flushes, and the refusal of a diverged evaluation.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from typing import Dict, List, Optional

from transformers import TrainerCallback

logger = logging.getLogger("hf_mkcd")


class MultiStepSchedule:
    """LR factor: linear warm-up, then ``rate ** (number of milestones passed)`` (picklable for scheduler.pt)."""

    def __init__(self, milestones: List[int], rate: float, warmup_steps: int = 0):
        self.milestones, self.rate, self.warmup_steps = list(milestones), rate, warmup_steps

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.rate ** bisect.bisect_right(self.milestones, step)


class AugmentationEpochCallback(TrainerCallback):
    """Tell a dataset transform with ``set_epoch`` which epoch starts (deterministic augmentation)."""

    def __init__(self, transform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.set_epoch(int(state.epoch + 1e-6) if state.epoch else 0)


class RunPlanCallback(TrainerCallback):
    """Says at the start what the run will do (so a 240-epoch default surprises nobody), and after the
    first steps how long it will take."""

    def __init__(self, method: str, notes: Optional[List[str]] = None, time_after_steps: int = 20):
        self.method, self.notes, self.time_after_steps = method, notes if notes is not None else [], time_after_steps
        self.start = self.first_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()
        if not state.is_world_process_zero:
            return
        steps_per_epoch = state.max_steps / args.num_train_epochs if args.max_steps <= 0 else None
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        scheduler = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
        lr_plan = (
            f"x{args.lr_decay_rate:g} after epochs {', '.join(map(str, args.lr_decay_epochs))}"
            if args.lr_decay_epochs
            else scheduler
        )
        length = (
            f"{args.num_train_epochs:g} epochs = {state.max_steps} steps ({steps_per_epoch:.0f} per epoch)"
            if steps_per_epoch
            else f"{state.max_steps} steps"
        )
        logger.info(
            f"plan: method {self.method}, {length}, batch {batch} ({args.per_device_train_batch_size} x "
            f"{args.gradient_accumulation_steps} accumulation x {args.world_size} process(es)), LR "
            f"{args.learning_rate:g} "
            f"{lr_plan}, evaluation: "
            f"{args.eval_strategy.value if hasattr(args.eval_strategy, 'value') else args.eval_strategy}, "
            f"checkpoints: {args.save_strategy.value if hasattr(args.save_strategy, 'value') else args.save_strategy}, "
            f"output: {args.output_dir}"
        )
        for note in self.notes:
            logger.info(f"plan: {note}")

    def on_step_end(self, args, state, control, **kwargs):
        if self.first_step is None:
            self.first_step = (state.global_step, time.time())  # the first step carries start-up costs: time after it
            return
        step0, t0 = self.first_step
        done = state.global_step - step0
        if done == self.time_after_steps and state.is_world_process_zero:
            per_step = (time.time() - t0) / done
            left = per_step * (state.max_steps - state.global_step)
            logger.info(
                f"{per_step:.3f} s per step: about {_duration(left)} left for {state.max_steps - state.global_step} "
                f"steps (evaluation not included)"
            )


class TeacherCacheCallback(TrainerCallback):
    """Flushes the cache at each epoch end and says, at the end, how much of the teacher's work it saved."""

    def __init__(self, cache):
        self.cache = cache

    def on_epoch_end(self, args, state, control, **kwargs):
        self.cache.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.cache.flush()
        total = self.cache.hits + self.cache.misses
        if total and state.is_world_process_zero:
            logger.info(
                f"teacher cache: {self.cache.hits} of {total} samples read from {self.cache.root} "
                f"({100 * self.cache.hits / total:.0f}%), the teacher ran on the rest"
            )


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


class FiniteMetricsCallback(TrainerCallback):
    """A diverged run must not look finished: a non-finite evaluation metric stops it with an error."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        check_finite_metrics(metrics or {})


def check_finite_metrics(metrics: Dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise FloatingPointError(
            f"evaluation gave non-finite {bad}: the run diverged (lower the learning rate or the "
            "loss weights). Its last complete checkpoint is kept; the final model is not written."
        )
