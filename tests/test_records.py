"""Episode records: jsonl repair (corrupt, truncated, duplicate lines) and the merge of rank shards."""

from __future__ import annotations

import json

from libero_core.records import (
    RecordWriter,
    done_marker,
    load_records,
    merge_shards,
    read_jsonl,
    shard_path,
)


def test_records_corrupt_truncated_and_duplicate_lines(tmp_path):
    recs = [dict(suite="libero_goal", task_id=t, init_state=0, seed=7, success=t == 1) for t in range(3)]
    lines = [json.dumps(recs[0]), "{not json", json.dumps(recs[1]), json.dumps(recs[0]), json.dumps(recs[2])]
    path = tmp_path / "episodes.jsonl"
    path.write_text("\n".join(lines) + '\n{"suite": "libero_goal", "task_id": 1')  # killed mid-write
    logs: list[str] = []
    assert load_records(path, logs.append) == recs
    assert any("line 2: corrupt record" in m for m in logs)
    assert any("line 6: truncated line" in m for m in logs)
    assert any("line 4" in m and "duplicate" in m for m in logs)
    assert path.read_text().count("\n") == 3 and not read_jsonl(path).bad_lines  # rewritten cleanly


def test_merge_shards_dedups_sorts_and_cleans(tmp_path):
    recs = [
        dict(suite="libero_object", task_id=0, init_state=i, seed=7, success=i % 2 == 0) for i in range(4)
    ]
    for rank, part in ((1, [recs[3], recs[1]]), (0, [recs[2], recs[0], recs[3]])):
        w = RecordWriter(shard_path(tmp_path, rank))
        for r in part:
            w.append(r)
        w.close()
        done_marker(tmp_path, rank, 2).write_text("")
    assert merge_shards(tmp_path, print) == recs == read_jsonl(tmp_path / "episodes.jsonl").records
    assert sorted(p.name for p in tmp_path.iterdir()) == [".merge.lock", "episodes.jsonl"]
