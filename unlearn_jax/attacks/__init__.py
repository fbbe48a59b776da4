"""Attacks on unlearned models that are not fine-tuning (issue 15): `condition` (the embedding
attack and the adversarial condition attack, the model's weights frozen)."""
