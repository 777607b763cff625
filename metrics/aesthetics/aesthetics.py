"""LAION aesthetic predictor v2 as an `evaluate` metric: `evaluate.load("metrics/aesthetics")` (images only)."""

import evaluate

from trl_sail.evaluation.metric_modules import IMAGE_FEATURES, SCORER_KWARGS_DOC, compute_scores


_DESCRIPTION = """LAION aesthetic predictor v2 (sac+logos+ava1-l14-linearMSE): the CLIP ViT-L/14 image embedding,
L2-normalized, into an MLP head; scores about 1-10. The head's real weights ship with trl_sail."""

_CITATION = """@misc{schuhmann2022aesthetic,
  title={LAION Aesthetics Predictor V2 (improved aesthetic predictor)},
  author={Schuhmann, Christoph},
  howpublished={https://github.com/christophschuhmann/improved-aesthetic-predictor},
  year={2022}
}"""

_KWARGS_DESCRIPTION = (
    """
Args:
    images (`list` of PIL images): the images (no prompts).
    clip_name_or_path (`str`, *optional*): CLIP ViT-L/14, Hub id or local dir (`openai/clip-vit-large-patch14`).
    head_path (`str`, *optional*): head weights (default: the copy shipped in trl_sail)."""
    + SCORER_KWARGS_DOC
    + """
Returns:
    aesthetics (`float`): the mean score; scores (`list[float]`): one per image; scorer (`dict`).

Example:
    >>> aesthetics = evaluate.load("metrics/aesthetics")
    >>> aesthetics.compute(images=images)["aesthetics"]
"""
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Aesthetics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=IMAGE_FEATURES,
            reference_urls=["https://github.com/christophschuhmann/improved-aesthetic-predictor"],
        )

    def _compute(self, images, **scorer_kwargs):
        return compute_scores("aesthetics", images, None, **scorer_kwargs)
