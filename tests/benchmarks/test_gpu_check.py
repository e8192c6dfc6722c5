"""``make gpu-check`` (benchmarks/gpu_check.py) in its CPU dry mode, as CI runs it on machines without a GPU: every
section's code runs at toy size and the check exits 0; a failing section prints its traceback while the others
still run, and the exit status says so."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_gpu_check", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_mode_runs_every_section_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = load_benchmark()
    assert bench.main(["--dry-run", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in bench.ORDER:
        assert f"section {name}: ok" in out, out
    result = out.strip().splitlines()[-1]
    assert result.startswith("RESULT gpu_check device=cpu dry_run=1 "), result
    figures = dict(item.split("=", 1) for item in result.split()[2:])
    for key in ("clips_per_s_bf16", "busy_originals", "busy_copies", "decode_cpus_per_gpu", "train_ratio"):
        assert float(figures[key]) > 0, (key, result)
    assert 0 < float(figures["busy_originals"]) <= 1 and 0 < float(figures["busy_copies"]) <= 1
    assert (figures["ddp_gpus"], figures["clips_per_s_compile"], figures["failed"]) == ("0", "-", "0")
    assert (
        "skipped: no GPU in the CPU dry mode" in out and "skipped in the CPU dry mode: torch.compile" in out
    )


def test_a_failing_section_is_reported_and_the_others_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = load_benchmark()

    def broken(ctx) -> None:
        raise RuntimeError("this section is broken")

    monkeypatch.setitem(bench.SECTIONS, "model", broken)
    assert bench.main(["--dry-run", "--sections", "model,ddp,compile", "--workdir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "Traceback" in out and "RuntimeError: this section is broken" in out
    assert "section model: FAILED" in out and "section ddp: ok" in out and "section compile: ok" in out
    assert re.search(r"failed=1$", out.strip())
    with pytest.raises(SystemExit):
        bench.main(["--sections", "model,nonsense"])
    # The time bound: no section starts after --start-deadline (here: none at all).
    assert (
        bench.main(["--dry-run", "--sections", "model", "--start-deadline", "-1", "--workdir", str(tmp_path)])
        == 0
    )
    assert "section model: skipped (time bound" in capsys.readouterr().out
