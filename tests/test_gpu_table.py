"""benchmarks/gpu_table.sh, the one run that takes the README's GPU figures: every command it runs
exists with those flags, and its bookkeeping (logs, JSON lines, failures, time limits) holds. The
commands themselves need CUDA; here a stand-in interpreter plays them."""
import re
import subprocess
import textwrap
from pathlib import Path

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_table.sh"


def table() -> dict[str, list[str]]:
    """name -> command words, as ``--list`` prints them with the interpreter named ``python3``."""
    listed = subprocess.run(["bash", str(SCRIPT), "--list"], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHON": "python3"}).stdout
    rows = [[cell.strip() for cell in line.split("|")] for line in listed.splitlines()]
    return {name: command.split() for name, _, command in rows}


def flags_of(benchmark: Path) -> set[str]:
    """The options a benchmark's parser takes (its own, the shared ones, --no-X of BooleanOptionalAction)."""
    flags = set()
    for source in (benchmark, benchmark.with_name("common.py")):
        for call in re.findall(r"add_argument\((.*)", source.read_text()):
            flag = re.match(r'"(--[a-z0-9-]+)"', call).group(1)
            flags.add(flag)
            if "BooleanOptionalAction" in call:
                flags.add("--no-" + flag[2:])
    return flags


def test_every_command_names_files_and_flags_that_exist():
    rows = table()
    assert {"cuda_tests", "step", "step_graphs", "selection", "eval", "inference"} <= set(rows)
    for name, words in rows.items():
        assert words[0] == "python3", name
        if words[1:3] == ["-m", "pytest"]:
            tests = [w for w in words[3:] if not w.startswith("-")]
            assert tests and all((REPO / t).is_file() for t in tests), name
            continue
        script, options = REPO / words[1], [w for w in words[2:] if w.startswith("--")]
        assert script.is_file(), name
        unknown = set(options) - flags_of(script)
        assert not unknown, f"{name}: {script.name} has no {sorted(unknown)}"


def test_flags_of_reads_a_parser(tmp_path):
    (tmp_path / "common.py").write_text('p.add_argument("--device", default="auto")\n')
    bench = tmp_path / "b.py"
    bench.write_text('p.add_argument("--amp", action=argparse.BooleanOptionalAction)\np.add_argument("--flip")\n')
    assert flags_of(bench) == {"--device", "--amp", "--no-amp", "--flip"}


def run_table(tmp_path, *names, stand_in: str, script: Path = SCRIPT):
    python = tmp_path / "python"
    python.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(stand_in))
    python.chmod(0o755)
    out = tmp_path / "figures"
    done = subprocess.run(["bash", str(script), "--out", str(out), *names], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(python)}, timeout=60)
    return done, out


ECHO_ARGS = 'echo "{\\"args\\": \\"$*\\"}"'      # a stand-in's line: a JSON line naming its arguments


def test_logs_and_json_lines_of_each_command(tmp_path):
    # prints a JSON line naming its arguments; the --no-fold variant fails
    stand_in = f"""
        echo "progress noise"
        {ECHO_ARGS}
        [[ "$*" != *--no-fold* ]] || {{ echo "RuntimeError: no CUDA" >&2; exit 1; }}
    """
    done, out = run_table(tmp_path, "selection", "eval_no_fold", "step", stand_in=stand_in)
    assert done.returncode == 1
    lines = (out / "figures.jsonl").read_text().splitlines()
    assert lines == ['{"args": "benchmarks/selection.py --device cuda"}',
                     '{"args": "benchmarks/eval.py --device cuda --no-fold"}',
                     '{"args": "benchmarks/train_step.py"}']
    assert (out / "eval_no_fold.log").read_text().endswith("RuntimeError: no CUDA\n")
    assert "exit 1 after" in done.stdout and "RuntimeError: no CUDA" in done.stdout
    assert done.stdout.rstrip().endswith(f"1 of 3 failed; logs in {out}/")


def test_a_command_past_its_limit_is_stopped_and_the_next_runs(tmp_path):
    stand_in = """
        [[ "$*" == *selection* ]] && sleep 5
        echo '{"done": 1}'
    """
    script = SCRIPT.read_text().replace("selection           |  60 |", "selection           |   1 |")
    assert script != SCRIPT.read_text()
    short = tmp_path / "gpu_table.sh"
    short.write_text(script.replace('cd "$(dirname "$0")/.."', f'cd "{REPO}"'))
    done, out = run_table(tmp_path, "selection", "inference", stand_in=stand_in, script=short)
    assert done.returncode == 1
    assert re.search(r"exit 124 after [12] s \(time limit\)", done.stdout), done.stdout
    assert (out / "figures.jsonl").read_text() == '{"done": 1}\n'


def test_unknown_name_runs_nothing(tmp_path):
    done, out = run_table(tmp_path, "step", "stpe", stand_in="echo '{}'")
    assert done.returncode == 2 and "unknown name 'stpe'" in done.stderr
    assert not out.exists()


def test_budget_skips_the_commands_whose_limit_no_longer_fits(tmp_path):
    # step's limit (120 s, + 10 s to KILL) does not fit in 75 s; selection's 60 (+ 10) does, and runs
    done, out = run_table(tmp_path, "--budget", "75", "step", "selection", stand_in=ECHO_ARGS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== step: skipped (its limit, 120 s, does not fit in the 75 s left of --budget)" in done.stdout
    assert (out / "figures.jsonl").read_text() == '{"args": "benchmarks/selection.py --device cuda"}\n'
    assert not (out / "step.log").exists()
    assert done.stdout.rstrip().endswith(f"0 of 1 failed; logs in {out}/\nskipped for --budget 75: step")
    # 65 s: selection's limit fits, but not with the 10 s that a command may take past it before KILL
    done, out = run_table(tmp_path, "--budget", "65", "selection", stand_in=ECHO_ARGS)
    assert done.returncode == 0 and "skipped for --budget 65: selection" in done.stdout


def test_budget_must_be_whole_seconds(tmp_path):
    done, out = run_table(tmp_path, "--budget", "9m", "step", stand_in="echo '{}'")
    assert done.returncode == 2 and "--budget takes whole seconds, not '9m'" in done.stderr
    assert not out.exists()


def test_commands_import_the_checkouts_package_without_an_install(tmp_path):
    """A bare GPU machine has no ``pip install -e .``: the table puts lib/ first on PYTHONPATH and
    keeps what the caller put there (the unpacked wheels of the other packages)."""
    python = tmp_path / "python"
    python.write_text('#!/usr/bin/env bash\necho "{\\"path\\": \\"$PYTHONPATH\\"}"\n')
    python.chmod(0o755)
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "f"), "selection"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": str(python), "PYTHONPATH": "/tmp/site"},
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "f" / "figures.jsonl").read_text() == f'{{"path": "{REPO / "lib"}:/tmp/site"}}\n'
