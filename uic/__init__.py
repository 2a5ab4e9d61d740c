"""Shared core of the project: the behaviour-event schema, the model contract and the Redis
interest store. Every other package (tf_models, beam_jobs, client, model_server, bench)
imports these instead of redefining them."""
