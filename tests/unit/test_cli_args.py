"""The `hfx` command line checks its arguments while parsing (exit 2, one line naming the flag,
nothing started), and every flag of every subcommand explains itself and its default (issue 18)."""

from __future__ import annotations

import argparse

import pytest

from services.cli import build_parser, main, parse_args

# (argv after the subcommand's name, what the error line must name)
BAD = {
    "sim": [
        (["--instances", "0"], "--instances"), (["--instances", "-2"], "--instances"),
        (["--instances", "two"], "--instances"), (["--requests", "0"], "--requests"),
        (["--requests", "-100"], "--requests"), (["--rate"], "--rate"), (["--rate", "0"], "--rate"),
        (["--rate", "10", "-5"], "--rate"), (["--rate", "nan"], "--rate"), (["--seed", "-1"], "--seed"),
        (["--policy", "nope"], "--policy"), (["--policy"], "--policy"),
        (["--workload", "/nonexistent/w.yaml"], "--workload"), (["--profile", "nope"], "--profile"),
        (["--placement", "random"], "--placement"), (["--max-model-len", "-1"], "--max-model-len"),
        (["--json", "/nonexistent/dir/out.json"], "--json"),
    ],
    "bench": [
        (["--instances", "0"], "--instances"), (["--requests", "0"], "--requests"), (["--rate"], "--rate"),
        (["--rate", "-1"], "--rate"), (["--workers", "0"], "--workers"), (["--workers", "-4"], "--workers"),
        (["--probes", "0"], "--probes"), (["--probes", "-1"], "--probes"),
        (["--max-inflight", "0"], "--max-inflight"), (["--request-timeout", "0"], "--request-timeout"),
        (["--max-duration", "-1"], "--max-duration"), (["--max-model-len", "-1"], "--max-model-len"),
        (["--target", "nonsense"], "--target"), (["--target", "127.0.0.1:1", "--live-policies", "hfx"], "--live-policies"),
        (["--sim", "--target", "127.0.0.1:1"], "--target"), (["--live-policies", "nope"], "--live-policies"),
        (["--live-policies"], "--live-policies"), (["--engine", "tgi"], "--engine"),
        (["--sim-profile", "nope"], "--sim-profile"), (["--model", "/nonexistent"], "--model"),
    ],
    "up": [
        (["--workers", "0"], "--workers"), (["--workers", "-3"], "--workers"), (["--timeout", "0"], "--timeout"),
        (["--router-port", "0"], "--router-port"), (["--router-port", "70000"], "--router-port"),
        (["--http-port", "-1"], "--http-port"), (["--router-port", "4321", "--http-port", "4321"], "--http-port"),
        (["--redis-url", "localhost:6379"], "--redis-url"), (["--tracing", "jaeger"], "--tracing"),
        (["--classes", "/nonexistent/c.yaml"], "--classes"), (["--engine", "nope"], "--engine"),
        (["--sim-profile", "nope"], "--sim-profile"), (["--model", "/nonexistent"], "--model"),
        (["--policy", "nope"], "--policy"), (["--api-key", ""], "--api-key"),
    ],
    "generate": [
        ([""], "prompt"), (["   "], "prompt"), (["hi", "--max-tokens", "-1"], "--max-tokens"),
        (["hi", "--temperature", "-0.5"], "--temperature"), (["hi", "--ttft-ms", "0"], "--ttft-ms"),
        (["hi", "--tpot-ms", "-1"], "--tpot-ms"), (["hi", "--priority", "-1"], "--priority"),
        (["hi", "--timeout", "0"], "--timeout"), (["hi", "--router", "nohost"], "--router"),
        (["hi", "--router", "host:port"], "--router"), (["hi", "--task-class", ""], "--task-class"),
        (["hi", "--seed", "x"], "--seed"),
    ],
    "profile": [
        (["--kv-cache-mib", "0"], "--kv-cache-mib"), (["--max-num-seqs", "-1"], "--max-num-seqs"),
        (["--engine", "nope"], "--engine"), (["--out", "/nonexistent/dir/p.json"], "--out"),
        (["--grid", "huge"], "--grid"), (["--sim-profile", "nope"], "--sim-profile"), (["--device", "tpu"], "--device"),
        (["--model", "/nonexistent"], "--model"),
    ],
    "explain": [
        (["r-1", "--since", "abc"], "--since"), (["r-1", "--since", "-5m"], "--since"),
        (["r-1", "--limit", "0"], "--limit"), (["r-1", "--plot", "w.svg"], "--plot"),
        (["r-1", "--missed"], "REQUEST_ID or --missed"), ([], "REQUEST_ID or --missed"),
    ],
}
CASES = [(cmd, argv, name) for cmd, rows in BAD.items() for argv, name in rows]


def _usage_error(capsys, cmd: str, name: str, run) -> None:
    with pytest.raises(SystemExit) as exited:
        run()
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"hfx {cmd}: error: ") and name in errors[0], err
    assert out == ""                  # a run prints its header first (sim, bench)


@pytest.mark.parametrize("cmd,argv,name", CASES, ids=[f"{c} {' '.join(a)}" for c, a, _ in CASES])
def test_a_bad_argument_is_a_usage_error_that_names_it(tmp_path, capsys, cmd, argv, name):
    # `main` parses exactly so before it runs anything; parsing alone here means a check that
    # regressed fails this test instead of starting a cluster or an engine.
    home = tmp_path / "home"
    _usage_error(capsys, cmd, name, lambda: parse_args(build_parser(), ["--home", str(home), cmd, *argv]))
    assert not home.exists()


SAFE_TO_RUN = [c for c in CASES if c[0] in ("sim", "generate") or (c[0] == "bench" and "--live-policies" not in c[1])]


@pytest.mark.parametrize("cmd,argv,name", SAFE_TO_RUN, ids=[f"{c} {' '.join(a)}" for c, a, _ in SAFE_TO_RUN])
def test_main_exits_2_and_runs_nothing(tmp_path, capsys, cmd, argv, name):
    home = tmp_path / "home"
    _usage_error(capsys, cmd, name, lambda: main(["--home", str(home), cmd, *argv, "--quiet"] if cmd != "generate"
                                                 else ["--home", str(home), cmd, *argv]))
    assert not home.exists()


@pytest.mark.parametrize("argv", [
    ["sim"], ["bench"], ["bench", "--live-policies", "fcfs", "hfx", "--workers", "2"], ["up"],
    ["up", "--http-port", "0", "--engine", "sim", "--redis-url", "redis://127.0.0.1:6400/0"],
    ["generate", "hi"], ["generate", "hi", "--max-tokens", "0", "--seed", "-3", "--router", "[::1]:50051"],
    ["profile"], ["profile", "--out", "p.json"], ["router", "--scheduler", "127.0.0.1:50052"],
    ["worker", "--instance-id", "w0", "--port", "0"], ["model", "init"],
])
def test_the_defaults_and_good_values_parse(argv):
    build_parser().parse_args(argv)


def _parsers(parser: argparse.ArgumentParser, path: str):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert name in helped, f"`{path} {name}` has no help line in `{path} --help`"
                yield from _parsers(sub, f"{path} {name}")


def _flags():
    for path, parser in _parsers(build_parser(), "hfx"):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", formatter, action


FLAGS = list(_flags())


def test_the_walk_reaches_nested_subcommands():
    names = {name for name, _, _ in FLAGS}
    assert "hfx model init --out" in names and "hfx bench --probes" in names and "hfx generate prompt" in names


@pytest.mark.parametrize("name,formatter,action", FLAGS, ids=[f[0] for f in FLAGS])
def test_every_flag_says_what_it_does_and_its_default(name, formatter, action):
    assert action.help and action.help != argparse.SUPPRESS, f"{name} has no help"
    text = formatter._expand_help(action)
    assert len(text.split()) >= 2, f"{name}: help {text!r} explains nothing"
    if action.default not in (None, False, [], "", argparse.SUPPRESS) and not action.required:
        assert "default" in text, f"{name}: help {text!r} does not give its default {action.default!r}"


def test_autoscale_flags_refuse_contradictions_before_anything_starts(capsys):
    import pytest

    from services.cli import main

    for argv, says in ((["up", "--autoscale", "--min", "5", "--max", "2"], "--min 5 is above --max 2"),
                       (["up", "--autoscale", "--price", "cpu=-3"], "must be >= 0"),
                       (["up", "--autoscale", "--price", "cpu"], "expected DEVICE=PRICE"),
                       (["up", "--autoscale", "--actuator", "kubernetes"], "`hfx up` runs workers as local processes"),
                       (["up", "--autoscale", "--scale-down-utilization", "0.9"], "scale_down_utilization")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and says in err, (argv, err)


def test_the_kubernetes_actuator_refuses_bad_combinations(capsys):
    from services.cli import main

    scaler = ["scaler", "--scheduler", "127.0.0.1:1"]
    k8s = [*scaler, "--autoscale", "--actuator", "kubernetes"]
    for argv, says in (([*scaler, "--actuator", "kubernetes"], "needs --autoscale"),
                       ([*k8s], "drop --replicas"),
                       ([*k8s, "--replicas", "0", "--prefill", "1"], "drop --prefill"),
                       ([*k8s, "--replicas", "0", "--adopt-workers"], "drop --adopt-workers"),
                       ([*scaler, "--autoscale", "--k8s-namespace", "hfx"], "--k8s-namespace need --actuator kubernetes"),
                       ([*k8s, "--replicas", "0", "--k8s-deployment", "Worker_1"], "is not a Kubernetes name"),
                       ([*k8s, "--replicas", "0", "--k8s-namespace", "x" * 64], "is not a Kubernetes name")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and says in err, (argv, err)


def test_the_kubernetes_actuator_flags_reach_the_scalers_config(monkeypatch):
    from services import cli
    from services.scaler import serve as server

    seen = {}

    async def serve(config):
        seen["config"] = config

    monkeypatch.setattr(server, "serve", serve)
    assert cli.main(["scaler", "--scheduler", "127.0.0.1:1", "--autoscale", "--actuator", "kubernetes",
                     "--replicas", "0", "--k8s-namespace", "serving"]) == 0
    config = seen["config"]
    assert (config.actuator, config.k8s_namespace, config.k8s_deployment, config.replicas) == \
        ("kubernetes", "serving", "worker", 0)


def test_api_keys_come_from_a_file_and_hfx_up_never_puts_them_on_the_routers_command_line(tmp_path):
    import os
    import stat

    from services.local import cluster
    from services.local.statefile import ClusterFile
    from services.router.auth import ApiKey, read_key_file

    keys = tmp_path / "keys"
    keys.write_text("# team keys\nk-one\n\n  k-two  max_priority=1\n")
    assert [(k.secret, k.max_priority) for k in read_key_file(str(keys))] == [("k-one", None), ("k-two", 1)]
    (tmp_path / "bad").write_text("k-three max_prio=2\n")
    with pytest.raises(ValueError, match="line 1: unknown key option") as bad:
        read_key_file(str(tmp_path / "bad"))
    assert "k-three" not in str(bad.value)   # a key never shows in an error
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        read_key_file(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="cannot read"):
        read_key_file(str(tmp_path / "missing"))

    opts = cluster.UpOptions(home=tmp_path, model="m", workers=1, router_port=1, redis_url=None, policy="hfx",
                             engine="sim", tracing="off", timeout_s=1,
                             api_keys=("secret-1", read_key_file(str(keys))[1]))
    flags = cluster._router_flags(opts, ClusterFile(router="", scheduler="", scaler="", redis_url="",
                                                    redis_prefix="hfx", model="m", log_dir="", started_unix_s=0))
    assert "secret-1" not in " ".join(flags)
    path = flags[flags.index("--api-key-file") + 1]
    assert read_key_file(path) == (ApiKey("secret-1"), ApiKey("k-two", 1))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("file_value, flags, expected", [
    (False, [], False),                             # the file alone reaches the scaler and workers
    (False, ["--pd-local-prefill"], True),           # the flag wins over the file
    (None, [], None),                                # neither: every process keeps its default
])
def test_up_hands_every_process_the_one_resolved_pd_local_prefill(tmp_path, monkeypatch, file_value, flags, expected):
    from services.local import cluster

    config = tmp_path / "policy.yaml"
    config.write_text("chunk_tokens: 2048\n" + ("" if file_value is None else f"pd_local_prefill: {str(file_value).lower()}\n"))
    seen = []

    def fake_up(opts):   # stands in for starting processes: only what cmd_up hands it is checked
        seen.append(opts)
        raise RuntimeError("not starting anything in a unit test")

    monkeypatch.setattr(cluster, "up", fake_up)
    code = main(["--home", str(tmp_path / "home"), "up", "--engine", "sim", "--prefill", "1", "--decode", "1",
                 "--policy-config", str(config), "--detach", *flags])
    assert code == 1 and len(seen) == 1
    assert seen[0].pd_local_prefill is expected


def test_pd_autoscale_flags_refuse_contradictions(capsys):
    from services.cli import main

    scaler = ["scaler", "--scheduler", "127.0.0.1:1", "--autoscale"]
    for argv, says in (([*scaler, "--replicas", "0", "--prefill", "1"], "at least one of each"),
                       (["up", "--autoscale", "--prefill", "1", "--decode", "1", "--workers", "1"], "give --workers 0"),
                       (["up", "--autoscale", "--prefill", "1", "--decode", "1", "--min", "0"], "--min 0"),
                       (["up", "--autoscale", "--max-total", "4"], "P/D autoscaling only"),
                       (["up", "--prefill", "1", "--decode", "1", "--decode-tokens-per-s", "9"], "P/D autoscaling only"),
                       (["up", "--autoscale", "--prefill", "2", "--decode", "2", "--min", "2", "--max-total", "3"],
                        "max_total"),
                       ([*scaler, "--prefill", "1", "--decode", "1"], "give --replicas 0")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and says in err, (argv, err)


def test_pd_autoscale_flags_reach_the_scalers_config(monkeypatch):
    from services import cli
    from services.scaler import serve as server

    seen = {}

    async def serve(config):
        seen["config"] = config

    monkeypatch.setattr(server, "serve", serve)
    assert cli.main(["scaler", "--scheduler", "127.0.0.1:1", "--autoscale", "--replicas", "0", "--prefill", "1",
                     "--decode", "2", "--max", "3", "--prefill-tokens-per-s", "5000"]) == 0
    pd = seen["config"].pd_autoscale
    assert (pd.max_total, pd.prefill_tokens_per_s, pd.prefill.max_replicas, pd.decode.max_replicas) == (6, 5000.0, 3, 3)
