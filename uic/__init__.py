"""Shared core of the project, imported by every other package and importing none of them:

* `uic.events`      - the behaviour-event schema (one definition, one validator);
* `uic.event_files` - readers of event files (JSONL, Taobao CSV via `uic.taobao`);
* `uic.contract`    - model parts, their signatures, export paths and metadata;
* `uic.codec`       - the byte formats of stored states and behaviour-log members;
* `uic.store`       - the interest store, the one door to Redis (key layout, CAS, config).
"""
