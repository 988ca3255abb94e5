"""Probability of meeting a target from a 90 % band, against hand-computed values; spec and CLI checks."""

import math

import numpy as np
import pytest

from estimator.artifacts.report import sla_probability, summary_text
from estimator.cli import build_parser, main
from estimator.confidence import BAND_Z, draw, lognormal_from_band, prob_all, prob_within, quantile
from estimator.errors import SpecError
from estimator.pipeline import estimate
from estimator.sources.aic import AicSource
from estimator.sources.base import Stack
from estimator.spec import load_spec

# band (80, 125) ms: log-centre ln(sqrt(80*125)) = ln(100); sigma = ln(125/80) / (2 * 1.6449) = 0.135662
LOW, HIGH, SIGMA = 80.0, 125.0, math.log(125 / 80) / (2 * 1.6448536269514722)


def phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_band_ends_are_the_5_and_95_percent_points():
    mu, sigma = lognormal_from_band(LOW, HIGH)
    assert float(mu) == pytest.approx(math.log(100.0))
    assert float(sigma) == pytest.approx(0.135662, abs=1e-6)
    assert float(prob_within(125.0, LOW, HIGH)) == pytest.approx(0.95)
    assert float(prob_within(80.0, LOW, HIGH)) == pytest.approx(0.05)
    assert float(prob_within(100.0, LOW, HIGH)) == pytest.approx(0.5)


def test_probability_between_band_ends():
    # P(T <= 110) = Phi(ln(1.1) / 0.135662) = Phi(0.70256) = 0.7588
    assert float(prob_within(110.0, LOW, HIGH)) == pytest.approx(phi(math.log(1.1) / SIGMA))
    assert float(prob_within(110.0, LOW, HIGH)) == pytest.approx(0.7588, abs=1e-4)


def test_zero_width_band_is_the_point_rule():
    assert float(prob_within(100.0, 100.0, 100.0)) == 1.0
    assert float(prob_within(99.9, 100.0, 100.0)) == 0.0


def test_elementwise_over_arrays():
    p = prob_within(20.0, np.array([16.0, 20.0, 30.0]), np.array([25.0, 20.0, 40.0]))
    assert p[0] == pytest.approx(0.5)  # sqrt(16 * 25) = 20: the median
    assert p[1] == 1.0  # zero width at the target: the point rule
    # band (30, 40): centre sqrt(1200) = 34.64, sigma ln(4/3) / 3.2897 = 0.08745; z = ln(20/34.64) / sigma
    # = -6.28: P = 1.7e-10, not 0 (the old check sat in a comment)
    z = math.log(20 / math.sqrt(1200)) / (math.log(40 / 30) / (2 * 1.6448536269514722))
    assert 0 < p[2] < 1e-6 and p[2] == pytest.approx(0.5 * math.erfc(-z / math.sqrt(2)), rel=1e-9)
    # one target per band too
    q = prob_within(np.array([20.0, 19.0, 40.0]), np.array([16.0, 20.0, 30.0]), np.array([25.0, 20.0, 40.0]))
    assert q[0] == pytest.approx(0.5) and q[1] == 0.0 and q[2] == pytest.approx(0.95)


def test_joint_probability_is_the_product():
    assert float(prob_all(0.9, 0.8)) == pytest.approx(0.72)
    assert np.allclose(prob_all(np.array([0.5, 1.0]), 0.5), [0.25, 0.5])


def test_quantile_and_draws():
    assert float(quantile(0.95, LOW, HIGH)) == pytest.approx(125.0)
    assert float(draw(LOW, HIGH, BAND_Z)) == pytest.approx(125.0)
    assert float(draw(LOW, HIGH, 0.0)) == pytest.approx(100.0)


def test_bad_band_or_target_raises():
    with pytest.raises(ValueError):
        prob_within(10.0, 12.0, 11.0)
    with pytest.raises(ValueError):
        prob_within(0.0, 10.0, 11.0)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, "abc", True])
def test_spec_rejects_confidence_outside_zero_one(bad):
    with pytest.raises(SpecError, match="confidence"):
        load_spec(model="meta-llama/Llama-3.1-8B", system="h100_sxm", confidence=bad)


def test_spec_accepts_confidence_and_until_confident():
    s = load_spec(model="meta-llama/Llama-3.1-8B", system="h100_sxm", confidence="0.9",
                  validate={"until_confident": 0.8})  # fmt: skip
    assert s.confidence == 0.9 and s.validate.until_confident == 0.8
    with pytest.raises(SpecError, match="until_confident"):
        load_spec(model="meta-llama/Llama-3.1-8B", system="h100_sxm", validate={"until_confident": 1})


def test_cli_flags():
    ns = build_parser().parse_args(["validate", "--until-confident"])
    assert ns.until_confident == "0.9"
    ns = build_parser().parse_args(["validate", "--until-confident", "0.8", "--confidence", "0.95"])
    assert (ns.until_confident, ns.confidence) == ("0.8", "0.95")


def test_cli_bad_confidence_is_one_line_exit_2(capsys):
    assert main(["--confidence", "2", "--model", "meta-llama/Llama-3.1-8B", "--system", "h100_sxm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "confidence" in err[0]


class _Banded(AicSource):
    """AIC with a band of x(0.8, 1.25) around every point (sigma 0.1357 in log): a source with uncertainty."""

    def prefill_ttft_band(self, candidate, isl):
        v = self.prefill_ttft_ms(candidate, isl)
        return v * 0.8, v * 1.25

    def decode_itl_band(self, candidate, batch, context):
        v = self.decode_itl_ms(candidate, batch, context)
        return v * 0.8, v * 1.25


def test_confidence_pick_and_report_probability_through_the_band_methods():
    kw = {"model": "meta-llama/Llama-3.1-8B", "system": "h100_sxm", "gpus": "1,2", "cache": False}
    point, sure = load_spec(**kw), load_spec(**kw, confidence=0.9)
    src = _Banded(Stack.from_spec(point))
    a, b = estimate(point, src), estimate(sure, src)
    pa, pb = sla_probability(a), sla_probability(b)
    # the point rule runs decode next to the ITL boundary (17.96 ms of 20: P = Phi(ln(20/17.96)/0.1357) = 0.79)
    assert pa["decode"][0]["p_meets_itl"] == pytest.approx(0.786, abs=0.005)
    # the confident rule backs off to a concurrency whose ITL is at most 20 ms with probability >= 0.9
    d = b.selection.best_decode
    assert pb["decode"][0]["p_meets_itl"] >= 0.9 and d.concurrency < a.selection.best_decode.concurrency
    # by hand, not through prob_within: band x(0.8, 1.25) around the point, centre the point, sigma SIGMA
    assert pb["decode"][0]["p_meets_itl"] == pytest.approx(phi(math.log(20.0 / d.itl_ms) / SIGMA), abs=1e-9)
    for rep, sel in ((pa, a.selection), (pb, b.selection)):
        for x, c in zip(rep["prefill"], sel.prefill, strict=True):
            assert x["p_meets_ttft"] == pytest.approx(phi(math.log(point.ttft_ms / c.point.ttft_ms) / SIGMA))
    assert pb["rule"] == "probability >= 0.9" and pa["rule"] == "point estimate"
    assert pb["pick"] == pytest.approx(pb["prefill"][0]["p_meets_ttft"] * pb["decode"][0]["p_meets_itl"])
    assert len(pb["decode"]) == len(b.selection.decode)  # the pick and every alternative
    assert "Probability of meeting the SLA (rule: probability >= 0.9)" in summary_text(b)
