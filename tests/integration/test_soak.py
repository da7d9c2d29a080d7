"""The CI soak: three minutes at half the chain's capacity (SOAK_SECONDS to change), judged like the
documented 30-minute run (docs/soak.md): every service process's RSS and open descriptors flat after
the warm-up, p99 steady, every answer 200, the shared hand-off volume empty afterwards.

One difference: its p99 criterion compares two single minutes (the 30-minute run: the last minute
against the median of a third of them), and on this shared 2-core host one minute's p99 of ~2,000
requests moves by half between identical minutes (a CI soak: 47 → 72 ms, p50 24 → 27 ms, nothing of
ours changed). So it fails at 2× — a collapse or a growing queue, not the host's weather; 1.5× is
the 30-minute run's. Only minutes the host treated alike are compared: a minute that lost over 10
points more CPU to other guests than the baseline (on 2026-12-03 three soaks in a row failed on such
a last minute; the one measured lost ~30 % against ~8 %, p99 ×3.7) is reported, not judged; the soak
then runs up to three more minutes for a comparable one, and fails if none comes."""

import asyncio
import json
import os
from pathlib import Path

import pytest

from ml_pipeline_bench.soak import run_soak
from support.data import COFFEE_JPG

pytestmark = pytest.mark.integration
CI_MAX_P99_RATIO = 2.0


def test_steady_half_load_leaves_memory_descriptors_latency_and_volume_flat(stack, prometheus):
    seconds = float(os.environ.get("SOAK_SECONDS", "180"))
    shared = os.environ.get("STACK_SHARED_DATA_DIR")
    if not shared:
        pytest.fail("STACK_SHARED_DATA_DIR is not set: the test run mounts the hand-off volume there")
    result = asyncio.run(
        run_soak(
            f"{stack['postprocess']}/finalize",
            COFFEE_JPG,
            prometheus_url=prometheus,
            duration_s=seconds,
            warmup_s=seconds / 3,
            window_s=seconds / 3,
            shared_dir=Path(shared),
            max_p99_ratio=CI_MAX_P99_RATIO,
        )
    )
    summary = result.summary()
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "rate_rps",
                    "p99_first_ms",
                    "p99_last_ms",
                    "statuses",
                    "growth",
                    "shared_files_after",
                    "failures",
                )
            },
            indent=1,
        )
    )
    assert summary["passed"], summary["failures"]
    assert len(summary["growth"]) >= 4  # two model replicas, preprocess, postprocess
