"""ImageReward as an `evaluate` metric: `evaluate.load("metrics/imagereward")`."""

import evaluate

from trl_sail.evaluation.metric_modules import IMAGE_PROMPT_FEATURES, SCORER_KWARGS_DOC, compute_scores


_DESCRIPTION = """ImageReward (Xu et al., 2023): a BLIP ViT-L image encoder and a BERT text encoder cross-attending to
the image; the first token's feature goes through an MLP head, then score = (r - 0.16717) / 1.03334."""

_CITATION = """@inproceedings{xu2023imagereward,
  title={ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation},
  author={Xu, Jiazheng and Liu, Xiao and Wu, Yuchen and Tong, Yuxuan and Li, Qinkai and Ding, Ming and Tang, Jie and Dong, Yuxiao},
  booktitle={NeurIPS},
  year={2023}
}"""

_KWARGS_DESCRIPTION = (
    """
Args:
    images (`list` of PIL images): the generated images.
    prompts (`list[str]`): one prompt per image.
    model_name_or_path (`str`, *optional*): repo/dir with ImageReward.pt and med_config.json (`THUDM/ImageReward`).
    tokenizer_name_or_path (`str`, *optional*): BERT tokenizer (`google-bert/bert-base-uncased`)."""
    + SCORER_KWARGS_DOC
    + """
Returns:
    imagereward (`float`): the mean score; scores (`list[float]`): one per image; scorer (`dict`).

Example:
    >>> image_reward = evaluate.load("metrics/imagereward")
    >>> image_reward.compute(images=images, prompts=prompts)["imagereward"]
"""
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ImageReward(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=IMAGE_PROMPT_FEATURES,
            reference_urls=["https://github.com/THUDM/ImageReward", "https://huggingface.co/THUDM/ImageReward"],
        )

    def _compute(self, images, prompts, **scorer_kwargs):
        return compute_scores("imagereward", images, prompts, **scorer_kwargs)
