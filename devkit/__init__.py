"""Development harness: an embedded Redis, child-process supervision, the end-to-end demo.

Nothing of the product (uic, tf_models, beam_jobs, client, model_server) imports this
package; only the demo, the benchmarks and the tests do.
"""
