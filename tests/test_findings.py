"""The catalogue: every code has an explanation with a source; Finding validates its fields."""

import nnprobe
import pytest
from nnprobe.findings import CATALOGUE, Finding, Report

SPEC_CODES = """loss-at-init zero-grad-missing eval-mode-training train-mode-eval probabilities-into-loss
logits-into-nll non-finite exploding-gradients vanishing-gradients dead-units saturated-activations
update-ratio param-not-in-optimizer param-never-updated loss-not-decreasing bias-before-norm
dropout-before-batchnorm activation-on-logits stacked-linear final-bias-init batch-mixing causal-leak
view-mixes-batch class-imbalance unnormalized-inputs non-finite-data constant-features
duplicate-samples train-test-overlap cannot-overfit-batch input-independent not-reproducible
loss-scale-collapse loss-spike loss-clipped lr-schedule overfitting no-validation loss-scale-mismatch
target-in-input pretrained-input-mismatch gradient-mismatch""".split()


def test_catalogue_is_exactly_the_spec_codes():
    assert set(CATALOGUE) == set(SPEC_CODES)


@pytest.mark.parametrize("code", SPEC_CODES)
def test_explain_says_why_how_and_where_from(code):
    text = nnprobe.explain(code)
    assert text.startswith(code) and "Why it hurts:" in text and "How to fix it:" in text and "Source:" in text


def test_unknown_code_and_bad_severity_are_refused():
    with pytest.raises(KeyError, match="known codes"):
        nnprobe.explain("no-such-code")
    with pytest.raises(ValueError):
        Finding("no-such-code", "error", "x")
    with pytest.raises(ValueError):
        Finding("dead-units", "fatal", "x")


def test_report_ok_ignores_info_only():
    info = Finding("stacked-linear", "info", "fc1 -> fc2", module="fc1")
    warn = Finding("dead-units", "warning", "60% dead", module="relu1", step=3)
    assert Report([info]).ok and not Report([info, warn]).ok
    assert "[relu1] (step 3)" in str(Report([warn]))
