"""Every runtime check, one line each; the judge runs them in this order."""

from __future__ import annotations

from .base import Check
from .gradients.flow import GradientFlow
from .gradients.nonfinite import NonFinite
from .gradients.zero_grad import ZeroGradMissing
from .inputs.pretrained_input import PretrainedInputMismatch
from .loss.at_init import LossAtInit
from .loss.clipped import LossClipped
from .loss.input_format import LossInputFormat
from .loss.no_validation import NoValidation
from .loss.not_decreasing import LossNotDecreasing
from .loss.overfitting import Overfitting
from .loss.scale_mismatch import LossScaleMismatch
from .loss.spike import LossSpike
from .modes.eval_mode_training import EvalModeTraining
from .modes.train_mode_eval import TrainModeEval
from .optimizer.lr_schedule import LrSchedule
from .optimizer.never_updated import ParamNeverUpdated
from .optimizer.not_in_optimizer import ParamNotInOptimizer
from .optimizer.update_ratio import UpdateRatio
from .precision.loss_scale_collapse import LossScaleCollapse
from .units.dead import DeadUnits
from .units.saturated import SaturatedActivations

CHECKS: tuple[type[Check], ...] = (
    LossAtInit,
    LossInputFormat,
    ZeroGradMissing,
    EvalModeTraining,
    TrainModeEval,
    NonFinite,
    ParamNotInOptimizer,
    DeadUnits,
    SaturatedActivations,
    GradientFlow,
    UpdateRatio,
    ParamNeverUpdated,
    LossNotDecreasing,
    LossScaleCollapse,
    LossSpike,
    LossClipped,
    LossScaleMismatch,
    PretrainedInputMismatch,
    LrSchedule,
    Overfitting,
    NoValidation,
)
