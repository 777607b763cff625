"""Evaluation as in the SAIL paper: PickScore, HPSv2, ImageReward and LAION Aesthetics v2 scorers, prompt sets, and
the `trl-sail evaluate` script that generates images for several models and writes a results table."""

from .checkpoints import ScorerLoadingError, convert_image_reward_state_dict, convert_open_clip_state_dict
from .scorers import (
    SCORERS,
    AestheticScorer,
    HPSv2Scorer,
    ImageRewardScorer,
    PickScoreScorer,
    Scorer,
    build_scorers,
    load_scorer,
)
