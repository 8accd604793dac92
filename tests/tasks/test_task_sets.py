"""The built-in task sets: counts, fixed splits, no leakage across splits, declarations."""

import gzip
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from lmforge.data import registry
from lmforge.errors import ConfigError, DataError
from lmforge.tasks import TASKS, get_task, load_task
from lmforge.tasks.chat import ROLES
from lmforge.tasks.debian import prefix, stem
from lmforge.tasks.metrics import METRICS

SIZES = {  # seed 0, as documented in lmforge/tasks/datasets.py and docs/tasks.md
    "rotten-tomatoes": (10167, 1304, 1281),
    "wnut16": (1916, 239, 239),
    "debian-summaries": (3200, 400, 400),
    "debian-match": (3200, 400, 400),
    "chatterbot": (718, 90, 90),
    "wiki-qa": (233, 34, 39),
}


# sha256 (first 16 hex digits) of each seed-0 split as sorted-key JSON: the splits are a
# contract -- a change to the data rules must update these on purpose.
FINGERPRINTS = {
    "rotten-tomatoes": ("ea3149865eb97f51", "eb348603facf2e22", "4675f55a4510b915"),
    "wnut16": ("54a14c0727a2a627", "fc7bc0084868c6e7", "928db7024a5ec134"),
    "debian-summaries": ("74792c4b95a45b62", "c88adbb4ce3de9a9", "165c2f3a14d4ea02"),
    "debian-match": ("69e73e685df07109", "269552c66ae8aa72", "80fe80bbebbc1524"),
    "chatterbot": ("1677f93b8f4212cd", "943de32769a3d3fc", "10963300b54e90c6"),
    "wiki-qa": ("7659ea68b3cfc7ed", "fefca30a4e3216b5", "35a463878a387ca7"),
}


def _need(name):
    if not registry.installed(name):
        pytest.skip(f"built-in data set {name} is not installed")


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        _need(name)
        if name not in cache:
            cache[name] = load_task(name, seed=0)
        return cache[name]
    return get


def _sizes(splits):
    return tuple(len(splits[s]) for s in ("train", "val", "test"))


@pytest.mark.parametrize("name", list(SIZES))
def test_sizes_and_declarations(loaded, name):
    splits = loaded(name)
    assert _sizes(splits) == SIZES[name]
    assert tuple(hashlib.sha256(json.dumps(splits[s], sort_keys=True).encode()).hexdigest()[:16]
                 for s in ("train", "val", "test")) == FINGERPRINTS[name]
    task = get_task(name)
    assert all(m in METRICS for m in task.metrics)
    assert task.main_metric in task.metrics or task.main_metric == "loss"


def test_splits_are_fixed_by_seed(loaded):
    _need("wnut16")
    again = load_task("wnut16", seed=0)
    assert again == loaded("wnut16")
    other = load_task("wnut16", seed=1)
    assert _sizes(other) == _sizes(again) and other["test"] != again["test"]


def test_rotten_tomatoes(loaded):
    splits = loaded("rotten-tomatoes")
    task = get_task("rotten-tomatoes")
    assert task.labels == ("negative", "positive") and task.type == "classification"
    every = [e for s in splits.values() for e in s]
    # 12,808 snippets in the file, 56 of them word-for-word repeats
    assert len(every) == 12752 and len({e["text"] for e in every}) == 12752
    assert Counter(e["label"] for e in every) == Counter({1: 7368, 0: 5384})
    movies = {s: {e["movie"] for e in rows} for s, rows in splits.items()}
    assert not movies["train"] & movies["val"] and not movies["train"] & movies["test"]
    assert not movies["val"] & movies["test"]
    # the film listed under two titles stays in one split
    both = {s for s, m in movies.items() if m & {"el_crimen_del_padre_amaro",
                                                 "the_crime_of_padre_amaro"}}
    assert len(both) == 1


def test_wnut16(loaded):
    splits = loaded("wnut16")
    task = get_task("wnut16")
    assert task.labels[:3] == ("O", "B-company", "I-company") and len(task.labels) == 21
    every = [e for s in splits.values() for e in s]
    assert len(every) == 2394
    assert all(len(e["tokens"]) == len(e["tags"]) for e in every)
    assert {t for e in every for t in e["tags"]} == set(task.labels)
    assert sum(t.startswith("B-") for e in every for t in e["tags"]) == 1496
    first = next(e for e in every if e["id"] == 0)
    assert first["tokens"][14:17] == ["Empire", "State", "Building"]
    assert first["tags"][14:17] == ["B-facility", "I-facility", "I-facility"]


def test_chatterbot(loaded):
    splits = loaded("chatterbot")
    every = [e for s in splits.values() for e in s]
    keys = [tuple(m["content"] for m in e["messages"]) for e in every]
    assert len(keys) == len(set(keys)) == 898  # 2,026 entries: 1 malformed, 1,127 repeats
    for e in every:
        roles = [m["role"] for m in e["messages"]]
        assert set(roles) <= set(ROLES) and "assistant" in roles
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)
    openers = {s: {e["messages"][0]["content"].lower() for e in rows}
               for s, rows in splits.items()}
    assert not openers["train"] & openers["test"] and not openers["val"] & openers["test"]


def test_debian_fixture_provenance():
    path = registry.files("debian-summaries")[0]
    assert path == registry.files("debian-match")[0]
    data = path.read_bytes()
    assert len(data) < 2_000_000
    readme = (Path(path).parent / "README.md").read_text()
    assert hashlib.sha256(data).hexdigest() in readme  # the README names what is shipped
    rows = [json.loads(line) for line in gzip.decompress(data).decode().splitlines()]
    assert len(rows) == 4000 and [r["package"] for r in rows] == sorted(r["package"] for r in rows)
    assert len({stem(r["package"]) for r in rows}) == 4000  # one package per source stem
    assert len([r for r in rows if r["package"].startswith("0ad")]) <= 1
    assert all(r["description"].strip() and r["synopsis"].strip() for r in rows)


def test_debian_summaries(loaded):
    splits = loaded("debian-summaries")
    stems = {s: {stem(e["package"]) for e in rows} for s, rows in splits.items()}
    assert not stems["train"] & stems["test"] and not stems["val"] & stems["test"]
    assert not stems["train"] & stems["val"]
    e = splits["train"][0]
    assert set(e) == {"text", "target", "package"} and e["text"] and e["target"]


def test_debian_match(loaded):
    summaries = loaded("debian-summaries")
    splits = loaded("debian-match")
    synopsis = {e["package"]: e["target"] for s in summaries.values() for e in s}
    for name, rows in splits.items():
        n = len(rows)
        kinds = Counter(e["kind"] for e in rows)
        assert kinds == Counter({"positive": n - n // 2, "hard": n // 4, "random": n // 2 - n // 4})
        assert [e["package"] for e in rows] == [e["package"] for e in summaries[name]]
        members = {e["package"] for e in rows}
        for e in rows:
            assert e["label"] == int(e["kind"] == "positive")
            assert e["text_pair"] == synopsis[e["pair_package"]]
            assert e["pair_package"] in members  # negatives come from the same split
            assert (e["pair_package"] == e["package"]) == (e["kind"] == "positive")
    hard = [e for e in splits["train"] if e["kind"] == "hard"]
    same_prefix = sum(prefix(e["package"]) == prefix(e["pair_package"]) for e in hard)
    shared = Counter(prefix(e["package"]) for e in splits["train"])
    assert same_prefix == sum(shared[prefix(e["package"])] > 1 for e in hard)


def test_unknown_task_and_registry_listing(capsys):
    with pytest.raises(ConfigError, match="unknown task 'sst2'"):
        get_task("sst2")
    assert set(SIZES) == set(TASKS)
    from lmforge.cli import main

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("debian-summaries", "debian-match"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert re.search(r"\b0\.7 MB\b", line) and "task" in line


def test_fixture_builder_rules(tmp_path):
    """Near-copies, one stem twice, one synopsis twice: one of each pair survives."""
    from lmforge.tasks.debian import build_fixture

    words = [f"w{i}" for i in range(300)]

    def text(seed, n=25):
        return " ".join(random.Random(seed).sample(words, n))

    rows = [{"package": f"pkg{chr(97 + i)}", "synopsis": f"tool number {i}",
             "description": text(i)} for i in range(20)]
    rows += [
        {"package": "pkga-data", "synopsis": "data for tool zero",  # stem pkga again
         "description": text(100)},
        {"package": "other", "synopsis": "Tool number 1",  # synopsis of pkgb again
         "description": text(101)},
        {"package": "copy", "synopsis": "a copy",  # pkgc's description, one word changed
         "description": rows[2]["description"] + " changed"},
        {"package": "short", "synopsis": "too short", "description": "only five words here now"},
    ]
    src = tmp_path / "src.jsonl.gz"
    src.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    out = tmp_path / "out.jsonl.gz"
    info = build_fixture(src, out, size=20)
    kept = [json.loads(line)["package"] for line in gzip.open(out, "rt")]
    assert len(kept) == 20 and "short" not in kept and kept == sorted(kept)
    assert ("pkga" in kept) != ("pkga-data" in kept)
    assert ("pkgb" in kept) != ("other" in kept)
    assert ("pkgc" in kept) != ("copy" in kept)
    assert info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    again = tmp_path / "again.jsonl.gz"
    build_fixture(src, again, size=20)
    assert again.read_bytes() == out.read_bytes()  # byte-reproducible
    with pytest.raises(DataError, match="only 20 rows survive"):
        build_fixture(src, again, size=21)


SOURCE = Path("/work/shared/data/debian-descriptions.jsonl.gz")


@pytest.mark.slow
@pytest.mark.skipif(not SOURCE.exists(), reason="the full Debian extraction is not here")
def test_fixture_rebuilds_byte_for_byte(tmp_path):
    from lmforge.tasks.debian import build_fixture

    out = tmp_path / "debian.jsonl.gz"
    info = build_fixture(SOURCE, out)
    assert out.read_bytes() == registry.files("debian-summaries")[0].read_bytes()
    assert (info["source_rows"], info["pool"], info["visited"]) == (45361, 44706, 4925)
