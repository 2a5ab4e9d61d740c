"""Keras 3 DIEN, MIMN and an Embedding&MLP baseline, each split into the four parts of the
UIC contract (tower, step, head, full; docs/models.md, 'The model contract'), plus their
training and export CLIs.

* `tf_models.config.ModelConfig`: hyperparameters with the papers' defaults.
* `tf_models.models.build_model(name, config)`: a model with its variables created.
* `python -m tf_models.train`: train on events.jsonl + impressions.jsonl, write a run dir.
* `python -m tf_models.export` / `tf_models.export.export_model`: TF Serving SavedModels.
* `tf_models.layers`: the Keras layers (serializable, package "uic").
* `tf_models.data.synthetic`: the seeded synthetic data generator.
"""
