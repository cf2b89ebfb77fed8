"""Corpus perplexity from per-window negative log-likelihood sums, as an offline ``evaluate`` module.

Load it by path (no Hub access): ``evaluate.load("<...>/hf_adasplash/metrics/perplexity")``, or
``hf_adasplash.evaluation.load_perplexity_metric()``. Unlike the Hub's ``perplexity`` metric it never loads a
model: the caller scores the text with any model (patched, sharded, any attention implementation) and passes,
for each window, the summed NLL in nats and the number of scored tokens.
"""

import math

import datasets
import evaluate

_DESCRIPTION = """
Perplexity of a corpus scored in windows (for example the strided sliding window of the Transformers guide
"Perplexity of fixed-length models"): PPL = exp(sum_w nll_sum_w / sum_w num_tokens_w). Windows may have
different sizes; the result is the token-weighted corpus perplexity, not a mean of per-window perplexities.
"""

_KWARGS_DESCRIPTION = """
Args:
    nll_sums (list of float): summed negative log-likelihood (natural log) of the scored tokens of each window.
    num_tokens (list of int): number of scored tokens of each window (> 0 in total).
Returns:
    perplexity (float): exp(mean NLL per token).
    mean_nll (float): mean NLL per token, in nats.
    bits_per_token (float): mean NLL per token, in bits.
    num_tokens (int): tokens scored.
    num_windows (int): windows scored.
Examples:
    >>> metric = evaluate.load("hf_adasplash/metrics/perplexity")
    >>> metric.compute(nll_sums=[6.0, 2.0], num_tokens=[3, 1])["perplexity"]  # exp(8 / 4)
    7.38905609893065
"""

_CITATION = """
@misc{hf-perplexity-guide,
  title = {Perplexity of fixed-length models},
  howpublished = {\\url{https://huggingface.co/docs/transformers/perplexity}},
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"nll_sums": datasets.Value("float64"), "num_tokens": datasets.Value("int64")}),
            reference_urls=["https://huggingface.co/docs/transformers/perplexity"],
        )

    def _compute(self, nll_sums, num_tokens):
        total = int(sum(num_tokens))
        if total <= 0:
            raise ValueError("perplexity needs at least one scored token")
        if any(n < 0 for n in num_tokens):
            raise ValueError("num_tokens must be >= 0 for every window")
        mean_nll = math.fsum(nll_sums) / total
        return {
            "perplexity": math.exp(mean_nll),
            "mean_nll": mean_nll,
            "bits_per_token": mean_nll / math.log(2),
            "num_tokens": total,
            "num_windows": len(nll_sums),
        }
