"""Evaluation: how a run judges a model.  Callers write `evaluation.X`.

  rates.py       on the evaluation classifier's predictions / logits (host numpy):
                 `unlearning_ratio` (SGU's UR), `attack_rate` (AR_MU, AR_DiMRA on
                 argmax predictions), `topk_match_rate` (the one top-k rate:
                 UnlearnCanvas's AR is k = 3, k = 1 is `attack_rate`), `ar_cl`
  frechet.py     Fréchet distance between Gaussians fitted to classifier features:
                 `gaussian_stats`, `frechet_distance`, `frechet_distance_from_features`
  concept.py     UnlearnCanvas style unlearning: `ua_ira_cra` (UA / IRA / CRA), `sfid`
  nll.py         `dataset_nll`: bits/dim of a data set under the probability-flow ODE
  classifier.py  the evaluation classifier: `classifier_step` (training), `predict`,
                 `classify`, `embed` (jitted once per classifier), `sample_quality`,
                 `histogram_tv`
  fid.py         Inception FID the standard way, on `models.inception.InceptionV3`:
                 `inception_features` (batched, jitted; pool3 / spatial / logits),
                 `fid` (FID on pool3, sFID on spatial features), `save_fid_stats`,
                 `load_fid_stats`, `cached_fid_stats` (.npz with mu, sigma),
                 `inception_score`, `precision_recall` / `manifold_radii` (k-NN
                 manifolds), `inception_metrics` (all by name); `fid_entries` (a results.json
                 entry's FID / sFID / IS against cached reference statistics),
                 `load_fid_inception` (the weights file named by config.eval.inception_weights)
  inception_weights.py  pytorch-fid's .pth -> Flax variables (`convert_state_dict`),
                 `save_npz`, `load_inception_variables` (.npz or .pth; torch optional)
  clip_score.py  CLIP score 100 max(cos, 0) of (image, prompt) pairs with a local
                 FlaxCLIPModel: `load_clip`, `clip_scores` (per pair), `mean_clip_score`,
                 `clip_embedding_distance` (mean 1 - cos of paired images, SGU Table 3),
                 `clip_image_embeddings`, `clip_text_embeddings`, `clip_preprocess`
  restoration.py SGU's inpainting / reconstruction scores (Tables 3-4): `restoration_scores`
                 (accuracy of restored images against their originals, "Clean" accuracy,
                 CLIP distance), `upper_half_mask`, `clip_distance` (grey -> RGB)
  nudity.py      NudeNet nudity counts per exposed class at score >= 0.6 and the share
                 of flagged images: `nudity_counts` (images; needs the `nudity` extra,
                 imported only then), `count_detections`, `detection_summary`
  robustness.py  summaries of one attack curve (issue 15; not re-exported: callers write
                 `robustness.X`): `summarize`, `max_success`, `steps_to_half`, `area_under_curve`

Imports point downward only (data, train_state, training, errors, models); nothing here
imports the stages, tasks or reporting.  Curve CSVs and plots are in
`unlearn_jax.reporting.figures`.
"""
from unlearn_jax.evaluation.classifier import classifier_step
from unlearn_jax.evaluation.classifier import classify
from unlearn_jax.evaluation.classifier import embed
from unlearn_jax.evaluation.classifier import histogram_tv
from unlearn_jax.evaluation.classifier import predict
from unlearn_jax.evaluation.classifier import sample_quality
from unlearn_jax.evaluation.clip_score import CLIPComponents
from unlearn_jax.evaluation.clip_score import clip_embedding_distance
from unlearn_jax.evaluation.clip_score import clip_image_embeddings
from unlearn_jax.evaluation.clip_score import clip_preprocess
from unlearn_jax.evaluation.clip_score import clip_scores
from unlearn_jax.evaluation.clip_score import clip_scores_from_embeddings
from unlearn_jax.evaluation.clip_score import clip_text_embeddings
from unlearn_jax.evaluation.clip_score import cosine_distances
from unlearn_jax.evaluation.clip_score import load_clip
from unlearn_jax.evaluation.clip_score import mean_clip_score
from unlearn_jax.evaluation.concept import sfid
from unlearn_jax.evaluation.concept import ua_ira_cra
from unlearn_jax.evaluation.fid import cached_fid_stats
from unlearn_jax.evaluation.fid import fid
from unlearn_jax.evaluation.fid import fid_entries
from unlearn_jax.evaluation.fid import inception_features
from unlearn_jax.evaluation.fid import inception_metrics
from unlearn_jax.evaluation.fid import inception_score
from unlearn_jax.evaluation.fid import load_fid_inception
from unlearn_jax.evaluation.fid import load_fid_stats
from unlearn_jax.evaluation.fid import manifold_radii
from unlearn_jax.evaluation.fid import precision_recall
from unlearn_jax.evaluation.fid import save_fid_stats
from unlearn_jax.evaluation.frechet import frechet_distance
from unlearn_jax.evaluation.frechet import frechet_distance_from_features
from unlearn_jax.evaluation.frechet import gaussian_stats
from unlearn_jax.evaluation.inception_weights import convert_state_dict
from unlearn_jax.evaluation.inception_weights import load_inception_variables
from unlearn_jax.evaluation.nll import dataset_nll
from unlearn_jax.evaluation.nudity import count_detections
from unlearn_jax.evaluation.nudity import detection_summary
from unlearn_jax.evaluation.nudity import nudity_counts
from unlearn_jax.evaluation.rates import Classes
from unlearn_jax.evaluation.rates import Labels
from unlearn_jax.evaluation.rates import ar_cl
from unlearn_jax.evaluation.rates import attack_rate
from unlearn_jax.evaluation.rates import topk_match_rate
from unlearn_jax.evaluation.rates import unlearning_ratio
from unlearn_jax.evaluation.rates import wilson_interval
from unlearn_jax.evaluation.restoration import restoration_scores
from unlearn_jax.evaluation.restoration import upper_half_mask

__all__ = [
    "Classes", "Labels",
    "CLIPComponents", "ar_cl", "attack_rate", "cached_fid_stats", "classifier_step", "classify",
    "clip_embedding_distance", "clip_image_embeddings", "clip_preprocess", "clip_scores",
    "clip_scores_from_embeddings", "clip_text_embeddings", "convert_state_dict", "cosine_distances",
    "count_detections", "dataset_nll", "detection_summary", "embed", "fid", "fid_entries", "frechet_distance",
    "frechet_distance_from_features", "gaussian_stats", "histogram_tv", "inception_features",
    "inception_metrics", "inception_score", "load_clip", "load_fid_inception", "load_fid_stats", "load_inception_variables",
    "manifold_radii", "mean_clip_score", "nudity_counts", "precision_recall", "predict", "restoration_scores", "sample_quality",
    "save_fid_stats", "sfid", "topk_match_rate", "ua_ira_cra", "unlearning_ratio", "upper_half_mask", "wilson_interval",
]
