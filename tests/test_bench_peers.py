"""The peer benchmark's harness on tiny workloads: every available implementation (maml_ext fused
and generic, torch.func, and higher / torchopt / learn2learn where importable) must compute the
same meta-gradient as maml_ext, so a broken peer adapter, or a wrong maml_ext, fails here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/ is a folder of scripts, not a package
import bench_peers  # noqa: E402
import results_md  # noqa: E402

WORKLOADS = ["sinusoid", "sinusoid-fo", "conv4-5way", "conv4-20way"]
OTHERS = [n for n in bench_peers.IMPLEMENTATIONS if n != bench_peers.OURS]
TORCH_FUNC_BN = ("torch.func vmap(grad) through batch-statistics BatchNorm gets the second-order terms wrong "
                 "(float64 too; exact without vmap): pytorch/functorch#534")


def require(name: str) -> None:
    """Skip when a peer cannot run here: not installed (importorskip) or not importable."""
    reason = bench_peers.available(name)
    if reason == "not installed":
        pytest.importorskip(bench_peers.PEERS[name])
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


def cases() -> list:
    out = []
    for key in WORKLOADS:
        for name in OTHERS:
            if name in bench_peers.MLP_ONLY and key.startswith("conv4"):
                continue
            marks = ()
            if name == "torch.func" and key.startswith("conv4"):
                marks = pytest.mark.xfail(strict=True, reason=TORCH_FUNC_BN)
            out.append(pytest.param(key, name, marks=marks, id=f"{key}-{name}"))
    return out


@pytest.mark.parametrize(("key", "name"), cases())
def test_meta_gradient_matches_maml_ext(key: str, name: str) -> None:
    require(name)
    w = bench_peers.tiny(bench_peers.WORKLOADS[key])
    f64, f32 = bench_peers.check([name], w)[name]
    assert f64 <= bench_peers.TOLERANCE_F64, f"{name} on {w.label}: float64 relative difference {f64:.2e}"
    assert f32 <= bench_peers.TOLERANCE_F32, f"{name} on {w.label}: float32 relative difference {f32:.2e}"


def test_check_catches_a_different_computation() -> None:
    # First- against second-order MAML with a large step: the check must see the difference.
    w = bench_peers.replace(bench_peers.tiny(bench_peers.WORKLOADS["sinusoid"]), lr=0.5)
    fo = bench_peers.meta_gradient("maml_ext generic", bench_peers.replace(w, first_order=True), dtype=torch.float64)
    so = bench_peers.meta_gradient(bench_peers.OURS, w, dtype=torch.float64)
    assert bench_peers.relative_difference(fo, so) > 1e-3
    assert bench_peers.relative_difference(so, so) == 0.0
    assert bench_peers.relative_difference([so[0][:1], *so[1:]], so) == float("inf")
    with pytest.raises(ValueError, match="2 gradients against"):
        bench_peers.relative_difference(so[:2], so)


def test_every_implementation_fills_every_gradient() -> None:
    w = bench_peers.tiny(bench_peers.WORKLOADS["sinusoid"])
    model, step = bench_peers.make_step("torch.func", w)
    step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="implementation must be one of"):
        bench_peers.make_step("jax", w)


def test_time_steps_medians() -> None:
    calls = {"a": 0, "b": 0}

    def count(name: str):
        def fn() -> None:
            calls[name] += 1
        return fn

    times = bench_peers.time_steps({n: count(n) for n in calls}, min_time=1e-6, rounds=2, min_calls=3,
                                   threads=(1, 2))
    assert set(times) == {("a", 1), ("a", 2), ("b", 1), ("b", 2)}
    assert all(wall >= 0 and cpu >= 0 for wall, cpu in times.values())
    # warm-up, then min_calls per round and thread count
    assert calls == {"a": 1 + 2 * 2 * 3, "b": 1 + 2 * 2 * 3}


def test_memory_in_a_fresh_process() -> None:
    mem = bench_peers.measure_memory(bench_peers.OURS, "sinusoid", threads=1, tiny_size=True)
    assert set(mem) == {"first_mib", "steady_mib"}
    assert all(v >= 0 for v in mem.values())
    # It sees what an iteration allocates: the generic path's graph (~3 MiB on the first) against
    # the fused op's workspaces (~0.1 MiB; ~1.4 MiB for the reference without the extension).
    fused = bench_peers.measure_memory(bench_peers.OURS, "sinusoid", threads=1)
    generic = bench_peers.measure_memory("maml_ext generic", "sinusoid", threads=1)
    assert generic["first_mib"] > max(1.0, fused["first_mib"] + 0.5), (fused, generic)
    with pytest.raises(ValueError, match="need a workload"):
        bench_peers.measure_memory(bench_peers.OURS, "omniglot", threads=1)


def test_main_writes_its_section(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(results_md, "RESULTS", tmp_path / "RESULTS.md")
    impls = [bench_peers.OURS, "maml_ext generic", "maml_ext nn.Sequential", "learn2learn"]
    argv = ["--tiny", "--quick", "--no-memory", "--min-time", "0.02", "--plot", str(tmp_path / "p.png"),
            "--write", "--threads2", "2", "--impls", *impls]
    assert bench_peers.main(argv) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "p.png").stat().st_size > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- bench_peers:begin -->" in text and "maml_ext generic" in text
    rows = [line for line in text.splitlines() if line.startswith("| sinusoid")]
    assert len(rows) == 2 * len(impls)  # second and first order, one row per implementation
    l2l = bench_peers.available("learn2learn")
    if l2l is not None:  # listed with its reason, not silently dropped
        assert all(l2l.split(":")[0] in line for line in rows if "| learn2learn |" in line)
    assert "1.00×" in out
    assert "speed-up 2 threads vs 1" in text
    own = next(line for line in rows if "| maml_ext nn.Sequential |" in line)
    assert own.count("|") == text.splitlines()[text.splitlines().index(own) - 1].count("|")


def test_own_sequential_is_mlp_only() -> None:
    conv = bench_peers.tiny(bench_peers.WORKLOADS["conv4-5way"])
    assert bench_peers.available("maml_ext nn.Sequential", conv) == "MLP workloads only"
    with pytest.raises(ValueError, match="MLP workloads only"):
        bench_peers.make_step("maml_ext nn.Sequential", conv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "0"], "--threads must be >= 1"),
        (["--min-time", "0"], "--min-time must be > 0"),
        (["--impls", "higher"], "--impls must include 'maml_ext'"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        bench_peers.main(argv)
    assert message in capsys.readouterr().err
