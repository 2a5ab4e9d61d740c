import time
def test_probe(server, expected, seeded_store):
    print("server", server.grpc_target, server.rest_url)
    from client import Scorer
    for m in ("dien","mimn"):
        with Scorer(m, store=seeded_store, server=server.grpc_target) as s:
            for arch in "BA":
                r = s.score(11, [5,17,230,999,4242,17,123456789012], [1,3,3,9,60,2,7], arch=arch)
                print(m, arch, r.status, r.scores, expected.scores[(m,1,11)], r.redis_ms, r.build_ms, r.rpc_ms)
