"""Two runs started at once on one store: every zero-shot shard is scored once.

Both runs map the zero-shot shards as Prefect tasks. Scoring is slowed (a few seconds a
shard) so that the runs overlap: a shard is claimed (a lock file in the shards directory)
by the run that gets to it first; the other run waits for it and reuses it. The count comes
from the runs' logs: each shard scored appears in one "scored shard-NNNNN" line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from cli_runs import api_url, cli_env, small_config

__all__ = ["api_url"]  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: the CLI with each shard's scoring delayed by SHARD_DELAY seconds
SLOW_SHARDS = r"""
import os, sys, time
import tasks.zero_shot as zs

real = zs._score_into

def slow(*args, **kwargs):
    time.sleep(float(os.environ["SHARD_DELAY"]))
    return real(*args, **kwargs)

zs._score_into = slow
from flows.label_pipeline import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory):
    from label_pipeline.testing import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-nli"), "nli", seed=3)


def test_two_concurrent_runs_score_each_zero_shot_shard_once(tmp_path, api_url, tiny_nli):
    from tasks.zero_shot import plan_shards

    words = {"bug": "crash error broken fails", "feature": "add support option new"}
    lines = ["text,labels"]
    for i in range(60):
        lab = ["bug", "feature"][i % 2]
        lines.append(f"{words[lab]} item {i},{lab if i < 36 else ''}")
    data = tmp_path / "in.csv"
    data.write_text("\n".join(lines) + "\n")
    cfg = small_config(tmp_path, str(data))
    cfg["zero_shot"] = {
        "enabled": True,
        "backend": "nli",
        "nli_model": str(tiny_nli),
        "shard_size": 8,
        "device": {"device": "cpu"},
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))

    env = cli_env(api_url, SHARD_DELAY="2")
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", SLOW_SHARDS, "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [r.communicate(timeout=400) for r in runs]
    for r, (_, err) in zip(runs, outs, strict=True):
        assert r.returncode == 0, err[-3000:]

    split_dir = next((tmp_path / "store" / "split").glob("*/manifest.json")).parent
    plan = plan_shards(split_dir, 8)
    assert len(plan) >= 4
    scored = Counter(
        m for _, err in outs for m in re.findall(r"zero_shot: scored (shard-\d{5})", err)
    )
    assert scored == Counter({s.name: 1 for s in plan}), (scored, [e[-2000:] for _, e in outs])
    # one stage directory, complete; no shards, temporary dirs or half-written stages left
    stage_dirs = [p.parent for p in (tmp_path / "store" / "zero_shot").glob("*/manifest.json")]
    assert len(stage_dirs) == 1
    assert not list((tmp_path / "store").rglob(".tmp-*"))
    assert not list((tmp_path / "store" / "zero_shot").glob(".shards-*/shard-*"))
