"""`Finding`, the catalogue of finding codes behind `explain()`, and the report base class.

Every code nnprobe can raise is listed here once, with its default severity, what it means, why
it hurts, how to fix it, and where the check and its threshold come from. Checks add the measured
numbers in each finding's message and `data`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    message: str
    module: str | None = None
    step: int | None = None
    hint: str = ""
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    count: int = field(default=1, compare=False)

    def __post_init__(self) -> None:
        if self.code not in CATALOGUE:
            raise ValueError(f"unknown finding code {self.code!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def __str__(self) -> str:
        where = f" [{self.module}]" if self.module else ""
        when = f" (step {self.step})" if self.step is not None else ""
        times = f" x{self.count}" if self.count > 1 else ""
        hint = f"\n    hint: {self.hint}" if self.hint else ""
        return f"{self.severity.upper():7s} {self.code}{where}{when}{times}: {self.message}{hint}"


@dataclass(frozen=True)
class Entry:
    family: str
    severity: str
    title: str
    why: str
    fix: str
    source: str


CATALOGUE: dict[str, Entry] = {
    # runtime (watch)
    "loss-at-init": Entry(
        "runtime", "warning", "The loss at initialisation is far from its expected value",
        "With C classes and an unbiased final layer the first cross-entropy loss should be about ln C; "
        "much higher means the logits start large (over-confident, badly scaled init), and the first "
        "steps are spent shrinking them: the hockey-stick loss curve.",
        "Scale down the last layer's weights at init (e.g. multiply by 0.01 or 0.1) and set its bias "
        "to the data's prior; check the input normalisation.",
        "Karpathy, 'A Recipe for Training Neural Networks' (verify loss @ init); TheDeepChecker flags "
        "an initial loss off by more than 1x of -log(1/C). nnprobe flags the first training call of cross_entropy / "
        "nll_loss (expected ln C) or binary_cross_entropy_with_logits (ln 2) above max(2 ln C, ln C + 1).",
    ),
    "zero-grad-missing": Entry(
        "runtime", "error", "Gradients accumulate across optimizer steps",
        "PyTorch adds each backward's gradients into .grad. Without optimizer.zero_grad() (or "
        "set_to_none) before the next backward, every step applies the sum of all past gradients.",
        "Call optimizer.zero_grad() once per optimizer step, before loss.backward(). Accumulating "
        "over several backwards before one step is fine and is not flagged.",
        "Karpathy's 'most common neural net mistakes' thread (#3: forgot to .zero_grad()). nnprobe checks, at the "
        "first backward after each optimizer step, whether .grad is still the tensor, at the version, the step used.",
    ),
    "eval-mode-training": Entry(
        "runtime", "error", "Training while Dropout/BatchNorm are in eval mode",
        "In eval mode Dropout does nothing and BatchNorm uses its running statistics, so the model "
        "trains without regularisation and with frozen normalisation.",
        "Call model.train() before the training loop (and after every evaluation pass).",
        "Karpathy's thread (#2: forgot to toggle train/eval mode). nnprobe flags an optimizer step while every "
        "Dropout (p > 0) and BatchNorm is in eval mode; a BatchNorm frozen with its parameters is left out.",
    ),
    "train-mode-eval": Entry(
        "runtime", "warning", "Evaluating while Dropout/BatchNorm are in train mode",
        "With gradients disabled (an evaluation pass), Dropout still drops units and BatchNorm uses "
        "batch statistics and updates its running averages: the measured accuracy is noisy and "
        "wrong, and the evaluation data leaks into the running statistics.",
        "Call model.eval() before evaluating and model.train() after.",
        "Karpathy's thread (#2); pytorch#76383 declined a warning for this, nnprobe judges behaviour: a forward "
        "with gradients disabled while a Dropout/BatchNorm is in train mode (BatchNorm recalibration with "
        "momentum=None, as torch.optim.swa_utils.update_bn does, excepted).",
    ),
    "probabilities-into-loss": Entry(
        "runtime", "error", "A loss that wants logits got probabilities",
        "CrossEntropyLoss applies log_softmax itself and BCEWithLogitsLoss applies sigmoid itself. "
        "Fed probabilities (rows that sum to 1, values in [0, 1]), the gradients are squashed and "
        "training stalls at a poor loss.",
        "Remove the softmax/sigmoid before the loss; apply it only when you need probabilities.",
        "Karpathy's thread (#5: passed softmaxed outputs to a loss that expects raw logits); "
        "UMLAUT's softmax/from_logits check. nnprobe reads the first rows of each input: for cross_entropy, values "
        "in [0, 1] whose rows sum to 1 within 1e-3 on 2 checked calls in a row; for binary_cross_entropy_with_logits, "
        "every value in [0, 1] on 10 calls in a row (logits at init straddle 0).",
    ),
    "logits-into-nll": Entry(
        "runtime", "error", "NLLLoss got raw scores instead of log-probabilities",
        "NLLLoss expects log_softmax outputs (all <= 0, logsumexp of each row = 0). On raw scores it "
        "just picks -score[target], which can be driven to -infinity.",
        "Apply log_softmax before NLLLoss, or use CrossEntropyLoss on the raw logits.",
        "Karpathy's thread (#5); PyTorch's NLLLoss documentation. nnprobe flags inputs with a value above 1e-3 or a "
        "row whose logsumexp over the class dimension is off 0 by more than 0.05, on 2 checked calls in a row.",
    ),
    "non-finite": Entry(
        "runtime", "error", "NaN or Inf appeared",
        "One NaN in a forward or backward pass poisons every weight it reaches at the next step.",
        "Look at the named module: a log of 0, a division by a small number, a too-high learning "
        "rate, or float16 overflow. Lower the learning rate, clip gradients, add an epsilon.",
        "SageMaker Debugger ExplodingTensor; DeepDiagnosis; torch.autograd.detect_anomaly (at 1.5x-3x cost). "
        "nnprobe names the first module: on a non-finite loss it re-runs the step's inputs under no_grad, module "
        "by module, before the update (RNG and BatchNorm buffers restored); on sampled steps it also reads the "
        "order of activations and output gradients.",
    ),
    "exploding-gradients": Entry(
        "runtime", "warning", "Gradients are exploding",
        "Gradient norms that grow by orders of magnitude make steps overshoot and end in NaN.",
        "Lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), check the init "
        "and add normalisation layers.",
        "AUTOTRAINER (ICSE 2021): gradient-norm ratio between layers > 70; TheDeepChecker: > 1e6. nnprobe flags "
        "a global gradient norm above 1e4x its median over the first sampled steps on 2 sampled steps in a row "
        "(1e6x once), or a first/last weight layer rms-gradient ratio above 1e3 on 3 in a row (clean MLPs, CNNs "
        "and transformers stay within 1e-1..1e1).",
    ),
    "vanishing-gradients": Entry(
        "runtime", "warning", "Gradients are vanishing",
        "When the early layers' gradients are orders of magnitude below the late layers', the early "
        "layers barely learn.",
        "Use ReLU-family activations, residual connections, normalisation, a better init (Kaiming).",
        "AUTOTRAINER: first/last gradient-norm ratio < 1e-3 with the first < 1e-4; SageMaker "
        "VanishingGradient: mean |g| < 1e-7. nnprobe compares rms gradients (norms grow with layer size) through "
        "depth: the median over the first third of the weight layers in forward order against the last third's "
        "(embeddings left out; a median, so one odd matrix such as an attention query does not decide), below "
        "1e-4 on every sampled step for at least 20 steps (at least 3 samples). Why 20 steps: at initialisation "
        "a transformer's first attention projections get gradients about 1e-5 of the classifier's for a dozen "
        "steps and then catch up (a tiny BERT, measured); a vanishing gradient is one that stays.",
    ),
    "dead-units": Entry(
        "runtime", "warning", "ReLU units are dead",
        "A unit whose ReLU output is zero for every example of a batch gets no gradient and can "
        "never recover: capacity silently lost.",
        "Lower the learning rate, use a better init, LeakyReLU/GELU, or normalisation before the ReLU.",
        "SageMaker Debugger DeadRelu (threshold_layer 50%); AUTOTRAINER dying ReLU (>= 70% zero "
        "gradients); DeepDiagnosis (ratio >= 0.7). nnprobe: more than 50% of a ReLU/ReLU6 layer's units zero on "
        "every example (8 examples per unit at least), on 3 sampled steps in a row. A functional F.relu / "
        "torch.relu on a watched module's output is judged under that module's name.",
    ),
    "saturated-activations": Entry(
        "runtime", "warning", "tanh/sigmoid activations are saturated",
        "A tanh output near +-1 (a sigmoid near 0 or 1) has almost zero gradient: the unit stops learning.",
        "Scale down the preceding layer's init (Karpathy's makemore part 3 uses a 5/3/sqrt(fan_in) "
        "gain), add BatchNorm before the nonlinearity, normalise the inputs.",
        "Karpathy, 'Building makemore Part 3': fraction of |tanh| > 0.97; SageMaker SaturatedActivation; "
        "DeepDiagnosis (> 50% saturated). nnprobe: more than 50% of a Tanh's outputs beyond +-0.97 (a Sigmoid's "
        "outside [0.03, 0.97]) on 3 sampled steps in a row.",
    ),
    "update-ratio": Entry(
        "runtime", "warning", "The update-to-weight ratio is far from ~1e-3",
        "rms(update)/rms(weight) per step measures how fast a layer learns. Far above ~1e-1 the "
        "learning rate is too high (weights are rewritten every few steps); far below ~1e-5 it is "
        "too low (the layer barely moves). Adam at its default gives ~1e-2, which is fine.",
        "Adjust the learning rate (or this layer's group) towards ratios near 1e-3.",
        "Karpathy, 'Building makemore Part 3' (log10 update:data ratio near -3); Stanford CS231n "
        "notes ('~1e-3'); TheDeepChecker: log10(mean|dw|/mean|w|) outside [-4, -1]. nnprobe: the median over the "
        "last 10 sampled steps of a >= 2-D weight outside [1e-5, 1e-1]. 'Too high' only when the run does not "
        "profit: the loss made under 5% progress over those steps on a weight that is not growing, or the loss "
        "diverges (its later half 1.5x its earlier half, or non-finite), growing weights included: a far too high "
        "rate makes every weight grow. Adam's first steps without warm-up (ratios 0.1-0.3 while the loss falls "
        "fast, a tiny GPT-2 measured) stay silent. 'Too low' only while the learning rate is steady and at least "
        "10% of its peak (annealing and warm-up are intended) and the loss has come down less than 10% from its "
        "start: tiny updates once a run has converged (an LSTM at a loss of 2e-4, measured) are no low rate.",
    ),
    "param-not-in-optimizer": Entry(
        "runtime", "error", "A trainable parameter is not in the optimizer",
        "It receives gradients but no optimizer step ever changes it, usually because the optimizer "
        "was built before a layer was added or from the wrong module.",
        "Build the optimizer from model.parameters() after the model is complete, or add a param group.",
        "Debugging checklist (weight updates not being applied). nnprobe: a requires_grad parameter of the "
        "watched model has a gradient at an optimizer step but is in none of its param groups.",
    ),
    "param-never-updated": Entry(
        "runtime", "warning", "A trainable parameter never changes",
        "It is in the optimizer but has not moved after several steps: no gradient reaches it "
        "(a detached branch, an unused layer) or its learning rate is zero.",
        "Check that the layer is used in forward and that nothing detaches its output; check its "
        "param group's lr. Freeze it explicitly (requires_grad_(False)) if that is intended.",
        "SageMaker Debugger UnchangedTensor; the debugging checklist. nnprobe: a trainable parameter in the "
        "optimizer whose figures (min, max, mean, std, l2) are bit-identical on sampled steps 5 or more "
        "optimizer steps apart.",
    ),
    "loss-not-decreasing": Entry(
        "runtime", "warning", "The loss is not decreasing",
        "Over a window of steps the loss has not gone down: a learning rate far off, a bug in the "
        "data or the labels, or the wrong loss.",
        "Overfit one batch first (nnprobe.overfit_one_batch); sweep the learning rate.",
        "SageMaker Debugger LossNotDecreasing; AUTOTRAINER slow convergence. nnprobe: after 20 or more steps, "
        "the median loss of the last window (max(10, n/5) steps) is not 1% below that of the first window; under "
        "a warm-up, from where the rate reached half its present value.",
    ),
    "loss-scale-collapse": Entry(
        "runtime", "warning", "The mixed-precision loss scale keeps collapsing",
        "A GradScaler skips optimizer.step() whenever the scaled gradients hold inf/NaN, and halves its "
        "scale. A few skips at the start, then about one per growth_interval, are how it works. Many in a "
        "row mean the gradients are inf/NaN even at a scale below 1 (a NaN source in the model or the "
        "loss, or float16 overflow in the forward); frequent skips mean the scale is pushed down over and "
        "over. Either way the model is not being updated on those steps.",
        "Look for the source of inf/NaN: run a few steps without the scaler and autocast (nnprobe then "
        "names the first non-finite module), compute the loss in float32 (outside autocast), use bfloat16 "
        "instead of float16, or lower the learning rate.",
        "PyTorch AMP documentation (torch.amp.GradScaler: skipped steps, backoff_factor 0.5, growth_interval "
        "2000). nnprobe counts iterations that end without optimizer.step() (no scaler argument: a backward "
        "whose gradients were cleared before the next forward with no step between) and flags 20 in a row (the "
        "default initial scale 2**16 halved 20 times is below 1) or, after the first update, 10 in the last "
        "200 iterations (a hundred times a healthy scale's rate).",
    ),
    "loss-spike": Entry(
        "runtime", "warning", "The loss spiked far above its recent level",
        "A sudden jump of the training loss is a corrupted or mislabelled batch, a step too large for "
        "the curvature (learning rate, warm-up too short), or the start of a divergence. Large runs "
        "often recover from one, but each spike costs steps, and repeated spikes end in NaN.",
        "Look at the named step's batch (save the batches of flagged steps); if the named layer's "
        "gradient jumped with the loss, clip gradients (torch.nn.utils.clip_grad_norm_), lengthen the "
        "warm-up or lower the learning rate; in transformers, check the attention logits (QK-norm) "
        "and the Adam epsilon.",
        "OLMo and PaLM training reports (loss spikes: skip the batches, restart before the spike); "
        "Karpathy's recipe (watch the loss). nnprobe: a robust z-score, the loss 10 median absolute "
        "deviations (x1.4826), 50%, and twice the window's spread (its highest loss less the median) above "
        "its highest loss, over the last 32 losses (refreshed every 8, and after a spike), and a tenth of the "
        "loss's level at the start of the run above the median (a converged loss of 0.01 with one batch at "
        "0.1 is noise on a clean run, measured); the spike "
        "step's gradients are taken before its update, and the first layer in forward order whose gradient "
        "norm is 4x its median over the last 5 sampled steps is named.",
    ),
    "loss-clipped": Entry(
        "runtime", "warning", "The loss is clamped before backward",
        "An upper clamp on the loss (clamp(max=c), clamp_max, torch.minimum) passes no gradient for "
        "every example above the cap: exactly the hardest examples, the outliers, stop teaching the "
        "model. It is usually meant as gradient clipping.",
        "Remove the clamp and clip the gradients instead: loss.backward(); "
        "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm); optimizer.step(). For robustness "
        "to outliers use a bounded-gradient loss (F.huber_loss, F.smooth_l1_loss).",
        "Karpathy, 'A Recipe for Training Neural Networks' ('tried to clip gradients but clipped loss "
        "instead, causing outliers to be ignored'). nnprobe reads the graph of the loss handed to "
        "probe.step(loss=...): an upper clamp between the loss function and the loss, and the loss "
        "function's own values on that step. It fires when at least one example was above the cap on a "
        "judged step: such an example gets exactly zero gradient, a fact rather than a statistic; a "
        "clamp that never binds (or one on the logits, below the loss function) is silent.",
    ),
    "lr-schedule": Entry(
        "runtime", "warning", "The learning-rate schedule stops the training early",
        "A schedule that reaches zero while training goes on wastes every later step; one that decays "
        "far too early (an epoch schedule such as StepLR(step_size=30) stepped once per batch) freezes "
        "a loss that was still falling.",
        "Step epoch schedulers once per epoch (or give them step counts: T_max = total steps for "
        "per-batch cosine); plot the learning rate (the report does) and check it ends where the run ends.",
        "Karpathy, 'A Recipe for Training Neural Networks' ('do not trust LR decay defaults'); the common "
        "mistakes list (#16, inadequate learning rate scheduling). nnprobe reads every param group's "
        "learning rate every step. It fires when a rate that had been positive stays at zero for 10 "
        "steps and 2% of the run so far, or when it falls below 1% of its peak at a step t while the loss "
        "was still falling (2% lower over the last max(5, min(t/4, 100)) steps than over the window before) and, "
        "after as many steps again below 1%, the loss falls at less than half the rate of that last "
        "window. A cosine or multi-step schedule reaches 1% in the last part of the run (cosine at "
        "94%), so it never spends as long below 1% as above it and stays silent; ReduceLROnPlateau "
        "lowers the rate only once the loss has stopped falling.",
    ),
    "overfitting": Entry(
        "runtime", "warning", "The validation loss rises while the training loss falls",
        "The model is memorising the training set: every evaluation after the best one is worse on "
        "held-out data, and the compute spent since is wasted or harmful.",
        "Stop at the best step (early stopping: keep the checkpoint with the lowest validation loss); "
        "regularise (more data, augmentation, weight decay, dropout, a smaller model).",
        "Karpathy, 'A Recipe for Training Neural Networks' (regularize: 'early stopping'); the common "
        "mistakes list (#18, ignoring early stopping). nnprobe takes the validation loss from losses "
        "computed under no_grad/inference_mode while the probe is open, or probe.step(val_loss=...). "
        "It fires when the validation loss rose at 3 evaluations in a row and ends 2% above its best, "
        "while the median training loss over the last evaluation interval is 1% below its median over the first "
        "interval of the rise: "
        "one noisy evaluation is not a trend, and a rise that the training loss shares is not "
        "overfitting. The finding names the best step.",
    ),
    "no-validation": Entry(
        "runtime", "info", "The run never evaluated on held-out data",
        "Without a validation loss, overfitting and the step to stop at are invisible; the training "
        "loss alone says nothing about generalisation.",
        "Evaluate on a held-out split every few hundred steps (under torch.no_grad() and model.eval()), "
        "or hand the value to probe.step(val_loss=...).",
        "The common mistakes list ('properly evaluating the model on validation or test data', #18 "
        "early stopping); Karpathy's recipe (set up the end-to-end training/evaluation skeleton). nnprobe "
        "reports it at the end of a run with 100 or more training losses and no validation loss "
        "(none computed under no_grad, none given to probe.step(val_loss=...)); shorter runs are "
        "experiments and stay silent.",
    ),
    "loss-scale-mismatch": Entry(
        "runtime", "warning", "The summed loss terms differ in scale by more than 1000x",
        "When one backward sums several losses, a term 1000x smaller than another contributes about "
        "nothing to the gradient: it is effectively ignored (a sum reduction next to a mean, targets "
        "on a 0-255 scale, a weight off by powers of ten).",
        "Put the terms on comparable scales (the same reduction, normalised targets) and weight them "
        "on purpose; log each term separately.",
        "The debugging checklist ('especially when using more than one type of losses, make sure all "
        "losses are scaled properly'). nnprobe measures, on judged steps, each loss-function call that "
        "one backward sums by |term x d(total)/d(term)| (its value times the weight the total gives it, "
        "read from the gradient reaching the term, so a deliberate weighting counts). It fires when the "
        "largest is over 1000x the smallest on 5 judged steps in a row spanning 20 steps or more; a "
        "term weighted exactly 0 is taken as switched off on purpose.",
    ),
    # structure (lint)
    "bias-before-norm": Entry(
        "lint", "warning", "A layer's bias is removed by the normalisation after it",
        "A normalisation that subtracts a per-channel mean (BatchNorm; InstanceNorm, and GroupNorm "
        "with one channel per group, after a conv) removes any bias added just before it: the bias "
        "is wasted parameters and optimizer work. LayerNorm over the features, GroupNorm with several "
        "channels per group and RMSNorm keep most of a bias, and are not flagged.",
        "Create the Linear/Conv with bias=False when such a normalisation follows it.",
        "Karpathy's thread and makemore part 3; NeuraLint (bias followed by batch norm).",
    ),
    "dropout-before-batchnorm": Entry(
        "lint", "warning", "Dropout feeds a BatchNorm",
        "Dropout changes the activation variance between training and evaluation, so the "
        "BatchNorm's running statistics do not match what it sees in eval mode (variance shift).",
        "Put Dropout after the BatchNorm (or after the last BatchNorm only).",
        "Li et al., 'Understanding the Disharmony between Dropout and Batch Normalization' (CVPR 2019); NeuraLint.",
    ),
    "activation-on-logits": Entry(
        "lint", "error", "An activation sits on the logits of a loss that wants raw logits",
        "A final ReLU clips negative logits, a softmax/sigmoid squashes them; CrossEntropyLoss and "
        "BCEWithLogitsLoss apply their own normalisation.",
        "Remove the final activation; apply softmax/sigmoid only at inference.",
        "Karpathy's thread (#5); UMLAUT (activation on the last layer).",
    ),
    "stacked-linear": Entry(
        "lint", "warning", "Two linear maps with nothing non-linear between them",
        "Two Linear layers in a row compose to one linear map: the extra layer adds parameters but "
        "no expressiveness, which is usually a forgotten activation.",
        "Add a nonlinearity between them, or merge them into one layer.",
        "The debugging checklist (check intermediate outputs and connections). A warning: a forgotten activation "
        "is by far the usual cause (SPEC section 6). A pair whose middle width is below both outer widths (a "
        "low-rank factorisation such as a LoRA adapter's A then B) is reported as info.",
    ),
    "final-bias-init": Entry(
        "lint", "info", "The final bias does not match the data's prior",
        "With imbalanced classes (or a regression target far from 0), an output bias of zero starts "
        "the model far from the base rate; the first iterations only learn the bias.",
        "Initialise the final bias to log class frequencies (classification) or the target mean (regression).",
        "Karpathy, 'A Recipe for Training Neural Networks' (init well).",
    ),
    # dependencies and layout
    "batch-mixing": Entry(
        "deps", "error", "Examples of a batch influence each other's outputs",
        "Output i depends on input j != i: a view/reshape mixed the batch axis, or an operation "
        "reduces over the batch. The model trains on information it will not have at test time.",
        "Find the first module named: replace view/reshape across the batch with permute/transpose.",
        "Karpathy, 'A Recipe for Training Neural Networks' (use backprop to chart dependencies).",
    ),
    "causal-leak": Entry(
        "deps", "error", "An output depends on future inputs",
        "An autoregressive model must only see positions <= t; a missing or off-by-one causal mask "
        "or a non-causal convolution lets it read the token it predicts (targets equal to the inputs "
        "in the data are target-in-input).",
        "Check the attention mask (torch.triu(..., diagonal=1)) and the convolution padding (left only).",
        "Karpathy's recipe ('autoregressive model takes as input the word it is trying to predict').",
    ),
    "view-mixes-batch": Entry(
        "layout", "error", "A view/reshape splits the batch axis",
        "Reshaping [T, B, C] to (B, -1) interleaves examples: each new row holds pieces of several "
        "examples. The code runs and trains, just badly.",
        "Move the batch axis first with permute/transpose, then reshape: x.permute(1, 0, 2).reshape(B, -1).",
        "Karpathy's thread (#6: used view instead of permute).",
    ),
    # data
    "class-imbalance": Entry(
        "data", "warning", "The classes are imbalanced",
        "With a largest/smallest class ratio above 10 the model can reach a good loss by ignoring "
        "the rare classes.",
        "Reweight the loss or resample; initialise the final bias to the log class frequencies; "
        "report per-class metrics.",
        "SageMaker Debugger ClassImbalance (ratio 10); Karpathy's recipe (look for data imbalance).",
    ),
    "unnormalized-inputs": Entry(
        "data", "warning", "The inputs are not normalised",
        "Features with a large mean or very different scales make optimisation ill-conditioned. "
        "nnprobe flags a float feature/channel whose |mean| or std exceeds 10, stds that differ by "
        "more than 100x, or a feature more than 5 stds away from zero; data in [0, 1] passes.",
        "Standardise per feature/channel (subtract the mean, divide by the std of the training set).",
        "SageMaker Debugger CheckInputImages (|mean| > 0.2); UMLAUT (input outside [-1, 1]).",
    ),
    "non-finite-data": Entry(
        "data", "error", "The data holds NaN or Inf",
        "A single non-finite input value turns the loss into NaN.",
        "Drop or impute the samples named; check the loading and preprocessing code.",
        "SageMaker Debugger ExplodingTensor, applied to inputs.",
    ),
    "constant-features": Entry(
        "data", "info", "Some features never change",
        "A constant feature carries no information; after standardisation it divides by a zero std.",
        "Drop it, or guard the normalisation with an epsilon.",
        "Karpathy's recipe (become one with the data).",
    ),
    "duplicate-samples": Entry(
        "data", "warning", "The data holds exact duplicates",
        "Duplicates over-weight some samples and, split between train and validation, inflate scores.",
        "Deduplicate before splitting.",
        "Karpathy's recipe (become one with the data: look for duplicates).",
    ),
    "train-test-overlap": Entry(
        "data", "error", "Test samples also appear in the training data",
        "The test score measures memorisation, not generalisation.",
        "Deduplicate across splits before training; split by a key (user, document) when samples repeat.",
        "Karpathy's recipe; common leakage checks.",
    ),
    "target-in-input": Entry(
        "data", "error", "The targets equal the inputs at the same positions",
        "For next-token prediction the target at position t must be the input at t+1. When y[:, t] == "
        "x[:, t] the model is shown the token it must predict: it learns to copy, the loss drops "
        "fast, and generation is useless.",
        "Shift by one: inputs = tokens[:, :-1], targets = tokens[:, 1:].",
        "Karpathy, 'A Recipe for Training Neural Networks' ('autoregressive model takes as input the word "
        "it's trying to predict due to an off-by-one bug'). nnprobe reads integer sequences (x, y) of "
        "the same shape [N, T >= 2]: it fires when y equals x at the same position in more than 90% of "
        "positions and more often than with the shift y[:, t] == x[:, t+1] (a correctly shifted dataset "
        "matches the shifted comparison instead). Dict batches with input_ids and labels (the Hugging "
        "Face convention, where the model shifts internally) are skipped.",
    ),
    "pretrained-input-mismatch": Entry(
        "data", "warning", "The inputs do not match the pretrained model's normalisation",
        "A pretrained model's BatchNorm running statistics record what its inputs looked like in "
        "pretraining. Inputs normalised differently (raw pixels, [0, 1] without the mean and std the "
        "checkpoint was trained with) reach its first normalisation layer far from those statistics: "
        "the pretrained features start out wrong and fine-tuning first has to undo the shift.",
        "Normalise inputs exactly as in pretraining (e.g. torchvision's weights.transforms(), or "
        "Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]) for ImageNet checkpoints).",
        "Karpathy, 'A Recipe for Training Neural Networks' ('initialized weights from pre-trained "
        "checkpoint but didn't use original mean'). nnprobe compares, at the first BatchNorm whose "
        "running statistics have seen data (num_batches_tracked > 0), the batch's per-channel mean and "
        "variance with the running ones: it fires when the rms over channels of |batch mean - running "
        "mean| / running std exceeds 1, or the median variance ratio is outside [1/9, 9] (3x in std). "
        "Correctly normalised inputs from a new dataset shift these by a fraction of a std; a "
        "forgotten normalisation shifts them by several. Run by check_init, doctor, and watch at the "
        "first training step.",
    ),
    # recipe
    "cannot-overfit-batch": Entry(
        "recipe", "error", "The model cannot overfit a single batch",
        "A correct model and training loop drive the loss on one small batch close to zero. If it "
        "cannot, something is broken: labels, loss, learning rate, a frozen or detached layer.",
        "Check the loss and labels, raise the learning rate, check that gradients reach every layer.",
        "Karpathy, 'A Recipe for Training Neural Networks' (overfit one batch); TheDeepChecker.",
    ),
    "input-independent": Entry(
        "recipe", "error", "The model learns as well without its inputs",
        "Trained on zeroed inputs from the same initial weights, the model reaches about the same "
        "loss: it does not use the inputs (the data is not reaching it, or labels are shuffled).",
        "Check that the inputs reach the model and that inputs and labels are paired correctly.",
        "Karpathy, 'A Recipe for Training Neural Networks' (input-independent baseline).",
    ),
    "gradient-mismatch": Entry(
        "recipe", "error", "A backward disagrees with finite differences",
        "A hand-written backward (a custom torch.autograd.Function) that returns a wrong gradient "
        "trains nothing correctly, yet the loss may still fall somewhat: the bug stays silent.",
        "Fix the module's backward (check each returned gradient against torch.autograd.gradcheck "
        "on small float64 inputs); or drop the custom Function and let autograd differentiate.",
        "The debugging checklist ('use gradient checking to check for these errors by approximating the "
        "gradient using a numerical approach'; 'incorrect expression for gradient updates'). "
        "check_gradients compares, on a float64 copy, the analytic directional derivative of a random "
        "projection of each checked module's output with central finite differences along 3 random "
        "directions (two forwards each, whatever the number of parameters). It fires when they differ "
        "by more than rtol (1e-3) of the larger, at two step sizes: float64 differences agree to about "
        "1e-7, and a kink crossed by one step size is not crossed by the other.",
    ),
    "not-reproducible": Entry(
        "recipe", "warning", "Two runs with the same seed differ",
        "Without reproducibility a change cannot be told from noise.",
        "Seed Python, NumPy and torch; use deterministic algorithms "
        "(torch.use_deterministic_algorithms(True)); seed DataLoader workers.",
        "Karpathy, 'A Recipe for Training Neural Networks' (fix random seed).",
    ),
}


def explain(code: str) -> str:
    """What the finding means, why it hurts, how to fix it, and its source."""
    try:
        e = CATALOGUE[code]
    except KeyError:
        known = ", ".join(sorted(CATALOGUE))
        raise KeyError(f"unknown finding code {code!r}; known codes: {known}") from None
    return (
        f"{code} ({e.severity}, {e.family}): {e.title}.\n\n"
        f"Why it hurts: {e.why}\n\nHow to fix it: {e.fix}\n\nSource: {e.source}"
    )


class Report:
    """Base of the one-shot reports: `.findings`, `.ok` (nothing above info), a readable str."""

    title = "nnprobe report"

    def __init__(self, findings: Iterable[Finding] = ()) -> None:
        self.findings: list[Finding] = list(findings)

    @property
    def ok(self) -> bool:
        return not any(f.severity in ("error", "warning") for f in self.findings)

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def details(self) -> list[str]:
        """Extra lines a subclass prints under its title (measured figures)."""
        return []

    def __str__(self) -> str:
        lines = [f"{self.title}: {'ok' if self.ok else 'problems found'}"]
        lines += [f"  {d}" for d in self.details()]
        lines += [f"  {f}" for f in self.findings] or ["  no findings"]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)
