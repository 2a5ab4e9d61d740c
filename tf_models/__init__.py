"""Keras 3 DIEN, MIMN and an Embedding&MLP baseline, each split into the four parts of the
UIC contract (tower, step, head, full; DESIGN.md §4), plus their training and export CLIs.

* `tf_models.config.ModelConfig`: hyperparameters with the papers' defaults.
* `tf_models.models.build_model(name, config)`: a model with its variables created.
* `python -m tf_models.train`: train on events.jsonl + impressions.jsonl, write a run dir.
* `python -m tf_models.export` / `tf_models.export.export_model`: TF Serving SavedModels.
* `tf_models.data`: readers and the synthetic data generator.
"""
