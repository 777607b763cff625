"""PickScore as an `evaluate` metric: `evaluate.load("metrics/pickscore")`."""

import evaluate

from trl_sail.evaluation.metric_modules import IMAGE_PROMPT_FEATURES, SCORER_KWARGS_DOC, compute_scores


_DESCRIPTION = """PickScore (Kirstain et al., 2023): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.
score = exp(logit_scale) * cos(text embedding, image embedding); typically 20-22 for SD1.5-class images."""

_CITATION = """@inproceedings{kirstain2023pickapic,
  title={Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image Generation},
  author={Kirstain, Yuval and Polyak, Adam and Singer, Uriel and Matiana, Shahbuland and Penna, Joe and Levy, Omer},
  booktitle={NeurIPS},
  year={2023}
}"""

_KWARGS_DESCRIPTION = (
    """
Args:
    images (`list` of PIL images): the generated images.
    prompts (`list[str]`): one prompt per image.
    model_name_or_path (`str`, *optional*): PickScore model, Hub id or local dir (`yuvalkirstain/PickScore_v1`).
    processor_name_or_path (`str`, *optional*): processor (`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`)."""
    + SCORER_KWARGS_DOC
    + """
Returns:
    pickscore (`float`): the mean score; scores (`list[float]`): one per image; scorer (`dict`): what was loaded.

Example:
    >>> pickscore = evaluate.load("metrics/pickscore")
    >>> pickscore.compute(images=images, prompts=prompts)["pickscore"]
"""
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PickScore(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=IMAGE_PROMPT_FEATURES,
            reference_urls=["https://huggingface.co/yuvalkirstain/PickScore_v1"],
        )

    def _compute(self, images, prompts, **scorer_kwargs):
        return compute_scores("pickscore", images, prompts, **scorer_kwargs)
