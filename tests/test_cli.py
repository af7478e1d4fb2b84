"""End-to-end tests of the command line: files and numbers produced, errors and exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from sim.cli.capacity import parse_slo
from sim.cli.main import main
from sim.errors import ConfigError

FAST = [
    "--cost-model",
    "linear",
    "--num-requests",
    "40",
    "--quiet",
    "--no-plots",
    "--set",
    "workload.output_tokens={dist: normal, mean: 30, stdev: 10, min: 2, max: 80}",
]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_run_writes_tables_summary_and_config(tmp_path):
    out = tmp_path / "r"
    res = invoke("run", *FAST, "--strategy", "poisson", "--rate", "4", "-o", str(out), "--max-num-seqs", "64", "--async-scheduling")
    assert res.exit_code == 0, res.output
    req = pd.read_parquet(out / "runs/run/requests.parquet")
    steps = pd.read_parquet(out / "runs/run/steps.parquet")
    summary = json.loads((out / "summary.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert len(req) == 40 and (req["status"] == "finished").all()
    s = summary["runs"][0]["summary"]
    assert s["num_finished"] == 40
    assert s["ttft_mean_ms"] == pytest.approx(req["ttft_s"].mean() * 1e3)
    assert s["num_steps"] == len(steps)
    assert cfg["server"]["max_num_seqs"] == 64 and cfg["arrival"]["rate_rps"] == 4.0 and cfg["server"]["async_scheduling"]
    assert summary["cost_model"] == "linear" and summary["formula"] == "weighted-average"
    assert "finished" in res.output and "TTFT" in res.output


def test_run_is_byte_identical_for_the_same_seed(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert invoke("run", *FAST, "-o", str(d)).exit_code == 0
    for name in ("summary.json", "config.yaml", "runs/run/requests.parquet", "runs/run/steps.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_sweep_reports_points_and_saturation(tmp_path):
    out = tmp_path / "s"
    res = invoke("sweep", *FAST, "--num-points", "5", "--executor", "serial", "-o", str(out))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["strategy"] for r in runs[:2]] == ["synchronous", "throughput"]
    rates = [r["offered_rate_rps"] for r in runs[2:]]
    sync_rps = runs[0]["summary"]["requests_per_s"]
    thr_rps = runs[1]["summary"]["requests_per_s"]
    # guidellm's rule: linspace(sync, throughput, n - 1)[1:]
    step = (thr_rps - sync_rps) / 3
    # then one overload rate at sweep.overload_factor (1.25) × the throughput rate
    assert rates == pytest.approx([sync_rps + step, sync_rps + 2 * step, thr_rps, 1.25 * thr_rps])
    assert "saturation_rps" in summary
    assert "saturation point" in res.output
    report = json.loads((out / "benchmarks.json").read_text())
    assert len(report["benchmarks"]) == len(runs)


def test_sweep_with_explicit_rates_and_plots(tmp_path):
    out = tmp_path / "s"
    args = [a for a in FAST if a != "--no-plots"]
    res = invoke("sweep", *args, "--rates", "2,4", "--executor", "serial", "-o", str(out))
    assert res.exit_code == 0, res.output
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [r["offered_rate_rps"] for r in runs] == [2.0, 4.0]
    for png in ("latency_vs_rate.png", "throughput_vs_offered.png", "batch_composition.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_results_do_not_depend_on_workers(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert invoke("sweep", *FAST, "--rates", "2,4,6", "--executor", "serial", "-o", str(a)).exit_code == 0
    assert invoke("sweep", *FAST, "--rates", "2,4,6", "--executor", "process", "--workers", "2", "-o", str(b)).exit_code == 0
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()


def test_capacity_finds_a_rate_meeting_the_slo(tmp_path):
    out = tmp_path / "c"
    res = invoke("capacity", *FAST, "--slo", "ttft_p99=60,tpot_p99=40", "--executor", "serial", "-o", str(out))
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    cap = s["capacity_rps"]
    assert cap is not None and cap > 0
    tried = s["tried"]
    # the capacity rate met the SLOs and every tried rate above the lowest failing one failed
    assert any(t["rate_rps"] == cap and t["meets_slo"] for t in tried)
    failing = [t["rate_rps"] for t in tried if not t["meets_slo"]]
    if failing:
        assert cap < min(failing)
    run = s["runs"][0]["summary"]
    assert run["ttft_p99_ms"] <= 60 and run["tpot_p99_ms"] <= 40
    assert 0 < s["goodput_rps"] <= run["requests_per_s"] + 1e-9


def test_guidellm_profile_as_config(tmp_path):
    prof = tmp_path / "profile.yaml"
    prof.write_text(
        "target: http://x\nrate-type: constant\nrate: 3\nmax-requests: 25\nrandom-seed: 7\n"
        "data:\n  prompt_tokens: 200\n  prompt_tokens_stdev: 50\n  prompt_tokens_min: 10\n  prompt_tokens_max: 400\n"
        "  output_tokens: 20\n  prefix_tokens: 64\n"
    )
    out = tmp_path / "o"
    res = invoke("run", str(prof), "--cost-model", "linear", "--quiet", "--no-plots", "-o", str(out))
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["source_format"] == "guidellm"
    assert cfg["arrival"] == {"strategy": "constant", "rate_rps": 3.0, "concurrency": None, "request_timeout_s": None}
    assert cfg["workload"]["num_requests"] == 25 and cfg["workload"]["prefix_tokens"] == 64 and cfg["seed"] == 7
    req = pd.read_parquet(out / "runs/run/requests.parquet")
    assert len(req) == 25 and (req["prompt_tokens"] >= 64 + 10).all()
    assert req["arrival_s"].diff().dropna().round(9).eq(round(1 / 3, 9)).all()


def test_inference_perf_config_as_sweep(tmp_path):
    conf = tmp_path / "ip.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "load": {"type": "poisson", "stages": [{"rate": 2, "duration": 10}, {"rate": 4, "duration": 10}]},
                "data": {
                    "type": "shared_prefix",
                    "shared_prefix": {"num_unique_system_prompts": 2, "system_prompt_len": 100, "question_len": 50, "output_len": 20},
                },
                "server": {"model_name": "meta-llama/Llama-2-7b-hf"},
            }
        )
    )
    out = tmp_path / "o"
    res = invoke("sweep", str(conf), "--cost-model", "linear", "--quiet", "--no-plots", "--executor", "serial", "-o", str(out))
    assert res.exit_code == 0, res.output
    runs = json.loads((out / "summary.json").read_text())["runs"]
    assert [r["offered_rate_rps"] for r in runs] == [2.0, 4.0]
    assert [r["summary"]["num_requests"] for r in runs] == [20, 40]
    req = pd.read_parquet(out / "runs/poisson@2/requests.parquet")
    assert (req["prompt_tokens"] == 150).all() and (req["output_tokens"] == 20).all()


def test_inference_perf_prompt_pool_and_multi_turn():
    from sim.load.formats import from_inference_perf

    base = {"load": {"type": "constant", "stages": [{"rate": 8, "duration": 600}]}}
    sp = {"num_groups": 10, "num_prompts_per_group": 10, "system_prompt_len": 100, "question_len": 447, "output_len": 248}
    wl = from_inference_perf({**base, "data": {"type": "shared_prefix", "shared_prefix": sp}})["workload"]
    assert wl["prompt_pool"] == 100 and wl["prefix_groups"] == 10 and wl["prefix_tokens"] == 100
    old = {"num_unique_system_prompts": 9, "num_users_per_system_prompt": 5, "system_prompt_len": 100, "question_len": 447, "output_len": 248}
    assert from_inference_perf({**base, "data": {"type": "shared_prefix", "shared_prefix": old}})["workload"]["prompt_pool"] == 45
    with pytest.raises(ConfigError, match="enable_multi_turn_chat"):
        from_inference_perf({**base, "data": {"type": "shared_prefix", "shared_prefix": {**old, "enable_multi_turn_chat": True}}})


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--rate", "-3", "--strategy", "poisson"], "arrival.rate_rps"),
        (["run", "--set", "server.max_num_seq=5"], "server.max_num_seq: unknown key"),
        (["run", "/nonexistent/config.yaml"], "file not found"),
        (["run", "--model", "no-such-model"], "model"),
        (["run", "--tensor-parallel-size", "3"], "tensor_parallel_size"),
        (["run", "--max-num-batched-tokens", "4"], "smaller than one KV block"),
        (["run", "--formula", "bogus"], "formula"),
        (["run", "--policy", "bogus"], "scheduler.policy"),
        (["capacity", "--cost-model", "linear", "--set", "slo={}"], "give at least one aggregate SLO"),
        (["capacity", "--slo", "ttft=abc"], "--slo"),
        (["sweep", "--rates", "1,x"], "--rates"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(args, message):
    res = CliRunner().invoke(main, args + ["--quiet", "-o", "/tmp/servesim-should-not-exist"])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_bad_yaml_config(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("server: [unclosed\n")
    res = CliRunner().invoke(main, ["run", str(p)])
    assert res.exit_code == 2 and "not valid YAML" in res.output


def test_unknown_flag_exits_2():
    res = CliRunner().invoke(main, ["run", "--max-num-seq", "3"])
    assert res.exit_code == 2 and "No such option" in res.output


def test_python_m_sim_exit_code_and_stderr(tmp_path):
    """The real entry point prints no traceback and exits 2 for bad input."""
    proc = subprocess.run(
        [sys.executable, "-m", "sim", "run", "--rate", "0", "--strategy", "constant", "-o", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "arrival.rate_rps" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_list_names_every_plug_point():
    res = invoke("list")
    assert res.exit_code == 0
    for word in ("llama-2-7b", "H100", "vllm-v1", "roofline", "weighted-average", "poisson"):
        assert word in res.output


def test_parse_slo():
    assert parse_slo("ttft_p99=500, tpot_p99_ms=50") == {"ttft_p99_ms": 500.0, "tpot_p99_ms": 50.0}
    with pytest.raises(ConfigError, match="unknown SLO"):
        parse_slo("latency=3")


def test_shipped_configs_and_workloads_are_valid():
    """Every file in configs/ and workloads/ loads strictly (unknown keys would fail)."""
    from pathlib import Path

    from sim.cli.config_input import build_config, default_config_dict
    from sim.config import merge, parse_run_config

    root = Path(__file__).resolve().parents[1]
    configs = sorted((root / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        build_config(str(path), {}, ())
    for path in sorted((root / "workloads").glob("*.yaml")):
        parse_run_config(merge(default_config_dict(), yaml.safe_load(path.read_text())), source=str(path))


def test_streamed_run_writes_the_same_records_as_in_memory(tmp_path):
    """--stream spills records in chunks; the files hold the same rows in the same order (the
    in-memory table's: by request id), the summary agrees (ITL percentiles from a 0.5 %-bin
    histogram)."""
    a, b = tmp_path / "mem", tmp_path / "stream"
    common = ["run", "--cost-model", "linear", "--num-requests", "300", "--rate", "20", "--strategy", "poisson", "--quiet", "--no-plots"]
    assert invoke(*common, "-o", str(a)).exit_code == 0
    assert invoke(*common, "--stream", "--set", "record_itls=true", "-o", str(b)).exit_code == 0
    ra = pd.read_parquet(a / "runs/run/requests.parquet")
    rb = pd.read_parquet(b / "runs/run/requests.parquet")
    pd.testing.assert_frame_equal(ra, rb)
    sa = pd.read_parquet(a / "runs/run/steps.parquet")
    sb = pd.read_parquet(b / "runs/run/steps.parquet")
    pd.testing.assert_frame_equal(sa, sb)
    ja = json.loads((a / "summary.json").read_text())["runs"][0]["summary"]
    jb = json.loads((b / "summary.json").read_text())["runs"][0]["summary"]
    for k, v in ja.items():
        if k.endswith(("_p50_ms", "_p90_ms", "_p95_ms", "_p99_ms")) or k.startswith("itl_"):
            assert jb[k] == pytest.approx(v, rel=6e-3, abs=1e-3), k  # histogram percentiles
        elif isinstance(v, float):
            assert jb[k] == pytest.approx(v, rel=1e-9), k  # sums in another order
        else:
            assert jb[k] == v, k
    assert not list(b.rglob("*.partial"))


def test_streamed_fleet_files_hold_the_rows_in_the_in_memory_order(tmp_path):
    """A streamed fleet's replicas spill interleaved chunks; requests.parquet still lists the
    requests by id and steps.parquet each replica's steps in turn, as without --stream."""
    a, b = tmp_path / "mem", tmp_path / "stream"
    common = ["run", "--cost-model", "linear", "--num-requests", "400", "--rate", "40", "--strategy", "poisson", "--replicas", "3", "--quiet", "--no-plots"]
    common += ["--router", "least-outstanding"]
    assert invoke(*common, "-o", str(a)).exit_code == 0
    assert invoke(*common, "--stream", "-o", str(b)).exit_code == 0
    for table in ("requests", "steps"):
        ta = pd.read_parquet(a / f"runs/run/{table}.parquet")
        tb = pd.read_parquet(b / f"runs/run/{table}.parquet")
        pd.testing.assert_frame_equal(ta, tb, obj=table)
    assert not [p for p in b.rglob("*") if ".partial" in p.name]


def test_id_ordered_spill_releases_rows_in_id_order_in_chunks():
    """Rows handed over in any order come out sorted by id, in chunks of at least
    ``chunk_rows`` consecutive ids until the flush, which hands on the rest."""
    import numpy as np

    from sim.records.metrics import IdOrderedSpill

    out: list[tuple[str, pd.DataFrame]] = []
    spill = IdOrderedSpill(lambda kind, f: out.append((kind, f)), chunk_rows=10)
    order = np.random.default_rng(3).permutation(57)
    for lo in range(0, 57, 7):
        ids = order[lo : lo + 7]
        spill("requests", pd.DataFrame({"request_id": ids, "x": ids * 2}))
        spill("steps", pd.DataFrame({"step_index": [lo]}))
    n_before_flush = len([k for k, _ in out if k == "requests"])
    spill.flush()
    reqs = [f for k, f in out if k == "requests"]
    assert n_before_flush and all(len(f) == 10 for f in reqs[:n_before_flush]) and all(len(f) <= 10 for f in reqs)
    got = pd.concat(reqs, ignore_index=True)
    assert got["request_id"].tolist() == list(range(57)) and (got["x"] == got["request_id"] * 2).all()
    assert [f["step_index"].iloc[0] for k, f in out if k == "steps"] == list(range(0, 57, 7))  # passed straight on


def test_streaming_spills_in_chunks(tmp_path):
    from sim.config import parse_run_config
    from sim.core.simulation import Simulation

    chunks = []
    cfg = parse_run_config({"cost": {"model": "fixed"}, "workload": {"num_requests": 50}, "arrival": {"strategy": "throughput"}})
    res = Simulation(cfg, spill=lambda kind, df: chunks.append((kind, len(df))), chunk_rows=16).run()
    req_rows = [n for k, n in chunks if k == "requests"]
    assert sum(req_rows) == 50 and max(req_rows) <= 16 and len(req_rows) >= 4
    assert sum(n for k, n in chunks if k == "steps") == res.summary["num_steps"]
    assert res.summary["num_finished"] == 50 and res.derived["streamed"]


def test_calibration_flag_changes_the_cost_and_is_recorded(tmp_path):
    base = ["run", "--num-requests", "30", "--quiet", "--no-plots"]
    assert invoke(*base, "--calibration", "none", "-o", str(tmp_path / "a")).exit_code == 0
    assert invoke(*base, "--calibration", "h100", "-o", str(tmp_path / "b")).exit_code == 0
    assert invoke(*base, "-o", str(tmp_path / "default")).exit_code == 0
    a, b, default = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("a", "b", "default"))
    assert a["runs"][0]["summary"]["tpot_mean_ms"] != b["runs"][0]["summary"]["tpot_mean_ms"]
    # no --calibration: the shipped h100 calibration, recorded in summary.json
    assert default["runs"][0]["summary"] == b["runs"][0]["summary"]
    assert (a["calibration"], b["calibration"], default["calibration"]) == (None, "h100", "h100")
    cfg = yaml.safe_load((tmp_path / "b/config.yaml").read_text())
    assert cfg["cost"]["calibration"] == "h100"
    bad = CliRunner().invoke(main, [*base, "--calibration", "nope", "-o", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "cost.calibration" in bad.output


def test_interrupted_streamed_run_leaves_no_result_files(tmp_path, monkeypatch):
    """Ctrl-C during a streamed run: exit 130, the chunk files already written are deleted and
    no results file appears."""
    from sim.core import simulation

    def interrupted_run(self, progress=None):
        self.sink.spill("requests", pd.DataFrame({"request_id": [1, 2]}))
        raise KeyboardInterrupt

    monkeypatch.setattr(simulation.Simulation, "run", interrupted_run)
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["run", "--stream", "--num-requests", "10", "--quiet", "-o", str(out)])
    assert res.exit_code == 130
    assert "no partial result files" in res.output
    left = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert left == []


def test_intervals_flag_adds_bracketing_intervals_to_run_and_sweep(tmp_path):
    base = ["--num-requests", "30", "--quiet", "--no-plots", "--calibration", "h100", "--intervals"]
    res = invoke("run", *base, "-o", str(tmp_path / "r"))
    assert res.exit_code == 0, res.output
    entry = json.loads((tmp_path / "r/summary.json").read_text())["runs"][0]
    for key in ("ttft_mean_ms", "tpot_mean_ms", "e2e_mean_ms"):
        lo, hi = entry["intervals_90"][key]
        # an interval for the *measured* value: cross-validated residuals that lean one way
        # (the shipped TPOT is low in CV more often than high) shift it off the prediction,
        # but it stays near it
        center = entry["summary"][key]
        assert 0 < lo < hi and lo / 1.3 <= center <= hi * 1.3
    assert "prediction intervals" in res.output
    res = invoke("sweep", *base, "--rates", "2,4", "--executor", "serial", "-o", str(tmp_path / "s"))
    assert res.exit_code == 0, res.output
    runs = json.loads((tmp_path / "s/summary.json").read_text())["runs"]
    assert len(runs) == 2 and all("intervals_90" in r for r in runs)


def test_intervals_without_calibration_is_a_usage_error(tmp_path):
    # the default run has the shipped calibration; --calibration none leaves nothing to draw from
    args = ["run", "--num-requests", "10", "--quiet", "--no-plots", "--intervals", "--calibration", "none", "-o", str(tmp_path / "x")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "calibration" in res.output
    assert not (tmp_path / "x" / "summary.json").exists()


def test_configuration_reference_is_current():
    """docs/configuration.md is generated from the schema; regenerate it when a field changes
    (python scripts/config_reference.py > docs/configuration.md)."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("config_reference", root / "scripts" / "config_reference.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (root / "docs" / "configuration.md").read_text() == mod.reference()


# ------------------------------------------------------------- a result folder is one run


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_replaces_the_result_folder_whole(tmp_path):
    out = tmp_path / "sw"
    first = CliRunner().invoke(main, ["sweep", "--rates", "4,8", "--num-requests", "20", "-q", "--no-plots", "-o", str(out)])
    assert first.exit_code == 0, first.output
    assert {p.name for p in (out / "runs").iterdir()} == {"poisson@4", "poisson@8"}
    second = CliRunner().invoke(main, ["sweep", "--rates", "5", "--num-requests", "20", "-q", "--no-plots", "-o", str(out)])
    assert second.exit_code == 0, second.output
    assert {p.name for p in (out / "runs").iterdir()} == {"poisson@5"}, "no runs of the earlier sweep are left beside the new one"
    assert f"results: {out}/" in second.output
    assert [p.name for p in tmp_path.iterdir()] == ["sw"], "no staging or previous folder left behind"


@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk-full", "interrupt"])
def test_a_failed_write_leaves_the_previous_result_untouched(tmp_path, monkeypatch, fault):
    out = tmp_path / "r"
    ok = CliRunner().invoke(main, ["run", "--num-requests", "15", "-q", "--no-plots", "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    before = _files(out)
    from sim.cli import output

    def failing(*args, **kwargs):
        raise fault

    monkeypatch.setattr(output, "write_guidellm", failing)
    monkeypatch.setattr("sim.cli.run.write_guidellm", failing)
    res = CliRunner().invoke(main, ["run", "--num-requests", "25", "-q", "--no-plots", "-o", str(out)])
    assert res.exit_code == (130 if isinstance(fault, KeyboardInterrupt) else 2), res.output
    assert _files(out) == before, "the old result, byte for byte"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]
    text = " ".join(res.output.split())  # the console wraps long lines
    assert ("previous result folder is unchanged" in text) or ("left as it was" in text)


def test_output_folder_problems_are_caught_before_simulating(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")

    def say(res):
        return " ".join(res.output.split())  # the console wraps long lines

    res = CliRunner().invoke(main, ["run", "--num-requests", "5", "-q", "-o", str(tmp_path / "notes")])
    assert res.exit_code == 2 and "not a servesim result" in say(res)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "file" / "sub"):
        res = CliRunner().invoke(main, ["run", "--num-requests", "5", "-q", "-o", str(target)])
        assert res.exit_code == 2 and "is a file" in say(res)
    res = CliRunner().invoke(main, ["run", "--num-requests", "5", "-q", "-o", "/proc/servesim-test"])
    assert res.exit_code == 2 and "cannot write results there" in say(res)


def test_sweep_rates_that_round_to_one_point_are_refused(tmp_path):
    res = CliRunner().invoke(main, ["sweep", "--rates", "5.00001,5.00002", "--num-requests", "10", "-q", "-o", str(tmp_path / "s")])
    assert res.exit_code == 2 and "one point" in res.output
    res = CliRunner().invoke(main, ["sweep", "--rates", "5,5", "--num-requests", "10", "-q", "-o", str(tmp_path / "s")])
    assert res.exit_code == 2


def test_labels_from_data_never_leave_the_result_folder(tmp_path):
    from sim.cli.output import safe_file_part

    for text in ("x/../../../ESCAPED", "..", ".hidden", "a\\b", "", "é" * 300, "ok-name_1.5@x"):
        part = safe_file_part(text)
        assert "/" not in part and "\\" not in part and not part.startswith(".") and 0 < len(part) <= 89
        assert (tmp_path / part).resolve().parent == tmp_path.resolve()
    assert safe_file_part("ok-name_1.5@x") == "ok-name_1.5@x"
    assert safe_file_part("a/b") != safe_file_part("a_b"), "distinct labels stay distinct"
    res = CliRunner().invoke(main, ["calibrate", "--ground-truth", str(tmp_path), "--name", "../evil", "-o", str(tmp_path / "c")])
    assert res.exit_code == 2 and "--name" in res.output


@pytest.mark.parametrize("sig, code, group", [(15, 143, False), (2, 130, False), (2, 130, True)], ids=["SIGTERM", "SIGINT", "Ctrl-C-to-the-process-group"])
def test_a_signal_mid_sweep_stops_workers_and_keeps_the_old_result(tmp_path, sig, code, group):
    """SIGTERM / SIGINT while a sweep's pool works (Ctrl-C in a terminal signals the whole
    process group, workers included): one line, exit 143 / 130, no traceback, no worker left
    running, no staging folder, the previous result intact."""
    import os
    import signal as _signal
    import time as _time

    out = tmp_path / "sw"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # an earlier result
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", "sweep", "--rates", "2,4,6,8,10,12", "--num-requests", "6000", "--workers", "2", "-q", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = _time.monotonic() + 60
        while not list(tmp_path.glob(".sw.partial-*")) and _time.monotonic() < deadline:
            _time.sleep(0.05)
        _time.sleep(2.0)  # the pool is simulating
        assert proc.poll() is None, proc.communicate()
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:  # whatever happened, leave no process of the session behind
        try:
            os.killpg(proc.pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass
        else:
            _time.sleep(0.5)
            pytest.fail("processes of the servesim session were still running")
    assert proc.returncode == code, err
    assert "Traceback" not in err and ("terminated" in err or "interrupted" in err), err
    assert (out / "summary.json").read_text() == "{}" and [p.name for p in out.iterdir()] == ["summary.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["sw"], "no staging folder left"


def test_command_table_matches_the_commands_and_help_loads_none_of_them():
    """`servesim --help` lists every command from a static table (so it imports no command,
    nor pandas, the simulator or matplotlib); each line is that command's own help."""
    from sim.cli.main import COMMANDS, load_command

    for name, (_, _, text) in COMMANDS.items():
        cmd = load_command(name)
        assert cmd.name == name and cmd.get_short_help_str(limit=1000) == text, name
    code = (
        "import sys\n"
        "from sim.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('pandas', 'pyarrow', 'matplotlib', 'simpy', 'sim.core.simulation') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


@pytest.mark.parametrize("where", ["config", "output", "model"])
def test_paths_longer_than_the_system_allows_are_one_short_message(tmp_path, where):
    long_name = "x" * 300
    args = {
        "config": ["run", str(tmp_path / f"{long_name}.yaml")],
        "output": ["run", "--num-requests", "3", "-q", "-o", str(tmp_path / long_name)],
        "model": ["run", "--num-requests", "3", "--model", str(tmp_path / long_name), "-q", "-o", str(tmp_path / "o")],
    }[where]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "File name too long" in res.output and len(res.output) < 500 and "Traceback" not in res.output


def test_a_file_size_limit_is_one_message_and_keeps_the_old_result(tmp_path):
    """Under `ulimit -f` a result file cannot be written whole: exit 2 with one line, the
    previous result intact, nothing half-written beside it (the signal no longer kills it)."""
    import resource

    out = tmp_path / "r"
    out.mkdir()
    (out / "summary.json").write_text("{}")

    def limit():  # 64 KB per file: the guidellm report of 200 requests is larger
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run(
        [sys.executable, "-m", "sim", "run", "--num-requests", "200", "-q", "--no-plots", "-o", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=120,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "File too large" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in out.iterdir()] == ["summary.json"] and (out / "summary.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_result_files_follow_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        res = CliRunner().invoke(main, ["run", "--num-requests", "5", "-q", "--no-plots", "-o", str(tmp_path / "r")])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert modes and all(m == 0o644 for m in modes.values()), modes


@pytest.mark.parametrize("width", [80, 100, 200])
def test_summary_table_reads_on_any_terminal_width(width):
    """On an 80-column terminal no cell is cut to "…": the table keeps the p99 columns."""
    from rich.console import Console

    from sim.cli.tables import summary_table

    s = {
        "requests_per_s": 23.28, "output_tokens_per_s": 5012.0, "ttft_mean_ms": 41.2, "ttft_p99_ms": 187.3,
        "tpot_mean_ms": 18.52, "tpot_p99_ms": 24.96, "e2e_mean_ms": 4021.0, "e2e_p99_ms": 8596.0,
        "num_mixed_steps": 10, "num_steps": 200, "num_preemptions": 0,
    }  # fmt: skip
    console = Console(width=width, record=True)
    console.print(summary_table([("poisson@18.72", 18.72, s, True), ("throughput", None, s, False)], "t", width=width))
    text = console.export_text()
    assert "…" not in text, text
    for cell in ("poisson@18.72", "187.3", "24.96", "8596", "yes", "NO"):
        assert cell in text, (cell, text)
    assert max(len(line) for line in text.splitlines()) <= width


def test_format_json_and_csv_on_stdout(tmp_path):
    """--format json prints summary.json's content; --format csv one row per point with the
    table's metrics at full precision; the files are written either way."""
    import csv
    import io

    res = CliRunner().invoke(main, ["run", "--num-requests", "30", "--format", "json", "-q", "--no-plots", "-o", str(tmp_path / "j")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc == json.loads((tmp_path / "j" / "summary.json").read_text())
    sw = CliRunner().invoke(main, ["sweep", "--num-requests", "40", "--num-points", "4", "--format", "csv", "-q", "--no-plots", "-o", str(tmp_path / "c")])
    assert sw.exit_code == 0, sw.output
    rows = list(csv.DictReader(io.StringIO(sw.output)))
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert [r["point"] for r in rows] == [run["label"] for run in summary["runs"]]
    for r, run in zip(rows, summary["runs"]):
        assert float(r["ttft_p99_ms"]) == run["summary"]["ttft_p99_ms"]
    wide = CliRunner().invoke(main, ["run", "--num-requests", "30", "--wide", "-q", "--no-plots", "-o", str(tmp_path / "w")], terminal_width=80)
    assert wide.exit_code == 0 and "TTFT mean" in wide.output


def test_narrow_tables_keep_whole_cells():
    """On an 80-column terminal the replica table keeps its main columns and every cell whole."""
    from rich.console import Console

    from sim.api import simulate
    from sim.cli.tables import replica_table

    res = simulate(None, {"workload": {"num_requests": 30}, "cluster": {"groups": [{"replicas": 3}]}})
    narrow, full = replica_table(res.replicas, "r", width=80), replica_table(res.replicas, "r")
    assert len(narrow.columns) < len(full.columns)
    con = Console(width=80, record=True, file=io.StringIO())
    con.print(narrow)
    assert "…" not in con.export_text()


def test_error_messages_print_brackets_as_they_are(capsys):
    """A message holding brackets (a list a user typed, pyarrow's "[errno 28]") is printed
    whole: the consoles do not read it as markup."""
    from sim.cli.common import handle_errors
    from sim.errors import ConfigError

    @handle_errors
    def failing():
        raise ConfigError("workload.tags: got [1, 2] and [bold]x[/bold]")

    with pytest.raises(SystemExit) as stop:
        failing()
    assert stop.value.code == 2
    assert "got [1, 2] and [bold]x[/bold]" in " ".join(capsys.readouterr().err.split())

    @handle_errors
    def full():
        raise OSError(28, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    with pytest.raises(SystemExit):
        full()
    assert "error: No space left on device" in " ".join(capsys.readouterr().err.split())
