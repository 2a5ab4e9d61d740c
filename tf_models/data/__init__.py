"""Training data: the seeded synthetic generator (`tf_models.data.synthetic`).

The readers of event files (JSONL, Taobao CSV) live beside the event schema in
`uic.event_files` and `uic.taobao`, because the Beam jobs read them too and use no TensorFlow.
"""
