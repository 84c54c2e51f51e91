"""Exits 0 once every shard is served by its final owner: each node serves what the
database says it holds, and together all 1,024. Usage: cluster-settled.py TOKEN URL...
(the cluster benches wait on it before measuring)."""
import json, sys, urllib.request

token, urls = sys.argv[1], sys.argv[2:]


def view(url):
    request = urllib.request.Request(url + "/api/v1/admin/cluster", headers={"authorization": "Bearer " + token})
    return json.load(urllib.request.urlopen(request))


views = [view(url) for url in urls]
held = {n["node_id"]: n["shards"] for n in views[0]["nodes"] if n["live"]}
served = [v["served_here"] for v in views]
done = views[0]["shards_unowned"] == 0 and sum(served) == 1024 and all(
    s > 0 and s == held.get(v["node_id"]) for s, v in zip(served, views))
sys.exit(0 if done else 1)
