"""HPSv2 as an `evaluate` metric: `evaluate.load("metrics/hpsv2", "v2.1")` (the configuration is the HPS version)."""

import evaluate

from trl_sail.evaluation.metric_modules import IMAGE_PROMPT_FEATURES, SCORER_KWARGS_DOC, compute_scores
from trl_sail.evaluation.scorers import normalize_hps_version


_DESCRIPTION = """Human Preference Score v2 (Wu et al., 2023): open_clip ViT-H-14 fine-tuned on HPD v2.
score = 100 * cos(image embedding, text embedding), about 24-28. The configuration name selects the checkpoint:
"v2.0" (HPS_v2_compressed.pt, the default) or "v2.1" (HPS_v2.1_compressed.pt); the two are not comparable, and the
version is returned with the scores."""

_CITATION = """@article{wu2023hpsv2,
  title={Human Preference Score v2: A Solid Benchmark for Evaluating Human Preferences of Text-to-Image Synthesis},
  author={Wu, Xiaoshi and Hao, Yiming and Sun, Keqiang and Chen, Yixiong and Zhu, Feng and Zhao, Rui and Li, Hongsheng},
  journal={arXiv preprint arXiv:2306.09341},
  year={2023}
}"""

_KWARGS_DESCRIPTION = (
    """
Args:
    images (`list` of PIL images): the generated images.
    prompts (`list[str]`): one prompt per image.
    model_name_or_path (`str`, *optional*): Hub repo, local dir or checkpoint file (`xswu/HPSv2`).
    processor_name_or_path (`str`, *optional*): ViT-H-14 config + tokenizer (`laion/CLIP-ViT-H-14-laion2B-s32B-b79K`)."""
    + SCORER_KWARGS_DOC
    + """
Returns:
    hpsv2 or hpsv2.1 (`float`): the mean score; version (`str`); scores (`list[float]`); scorer (`dict`).

Example:
    >>> hps = evaluate.load("metrics/hpsv2", "v2.1")
    >>> hps.compute(images=images, prompts=prompts)
"""
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class HPSv2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=IMAGE_PROMPT_FEATURES,
            reference_urls=["https://github.com/tgxs002/HPSv2", "https://huggingface.co/xswu/HPSv2"],
        )

    @property
    def version(self) -> str:
        return "v2.0" if self.config_name == "default" else normalize_hps_version(self.config_name)

    def _compute(self, images, prompts, **scorer_kwargs):
        name = "hpsv2" if self.version == "v2.0" else "hpsv2.1"
        return {"version": self.version, **compute_scores(name, images, prompts, **scorer_kwargs)}
