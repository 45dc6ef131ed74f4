"""Task folders: our format round trip, the Terminal-Bench and Harbor importers, the offline rule, bad input.

    .venv/bin/pytest tests/roll/test_task_formats.py -q

Fixtures under tests/fixtures/tasks/ are written in their own formats (terminal-bench/, harbor/) or broken on
purpose (broken/). No Docker here: building and running them is tests/rock/test_images.py.
"""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import pytest

from roll.cli import main as roll_main
from roll.tasks.formats import offline
from roll.tasks.loader import TaskFormatError, detect_format, load_task_dir, load_tasks, write_task_dir
from roll.tasks.spec import Environment, TaskSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
TB, HARBOR, BROKEN = FIXTURES / "terminal-bench", FIXTURES / "harbor", FIXTURES / "broken"
ONLINE = ("apt-get", "curl ", "uv venv", "uv pip", "uvx", "uv run", "source ", "pip install")


def live_lines(script: str) -> list[str]:
    """The lines bash executes (not comments, not the `true  # [ale:offline]` stand-ins)."""
    return [ln for ln in script.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "true  #"))]


def full_spec() -> TaskSpec:
    """A spec that uses every field our format carries."""
    return TaskSpec(
        id="every-field",
        instruction="Line one of the instruction.\nLine two: with a colon, 'quotes' and a trailing space \n",
        family="fixture",
        split="heldout",
        seed=1003,
        difficulty="hard",
        category="testing",
        steps=5,
        agent_timeout_s=300.5,
        test_timeout_s=45,
        workdir="/srv/work",
        environment=Environment(
            dockerfile="FROM rock/base:bookworm\nWORKDIR /srv/work\nCOPY data/input.txt /srv/work/input.txt\n",
            files={"data/input.txt": "one\ntwo\n", "notes.md": "# notes"},
            setup="set -e\necho ready > /srv/work/ready\n",
        ),
        tests={"test.sh": "#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n", "helpers/check.py": "print(1)\n"},
        grading="reward_file",
        solution="#!/bin/bash\nbash /solution/step.sh\n",
        solution_files={"step.sh": "echo done\n"},
        solution_steps=["ls", "cat input.txt", "echo done"],
        source="harbor",
    )


# ---- our format ---------------------------------------------------------------------------------


def test_round_trip_every_field(tmp_path):
    spec = full_spec()
    folder = write_task_dir(spec, tmp_path / spec.id)
    assert (folder / "Dockerfile").is_file() and (folder / "data" / "input.txt").read_text() == "one\ntwo\n"
    assert (folder / "solution" / "step.sh").is_file() and (folder / "tests" / "helpers" / "check.py").is_file()
    assert detect_format(folder) == "ale"
    assert load_task_dir(folder) == spec


def test_round_trip_generated_suite(tmp_path):
    from roll.tasks.suite import generate_suite

    specs = generate_suite(train_per_family=1, heldout_per_family=1)
    assert len({s.family for s in specs}) >= 12
    for spec in specs:
        back = load_task_dir(write_task_dir(spec, tmp_path / spec.id))
        assert back == spec, spec.id
    text = (tmp_path / specs[0].id / "task.yaml").read_text()
    assert "family: " in text and "image: rock/base:bookworm" in text and "max_agent_timeout_sec" in text


def test_write_refuses_a_non_empty_folder(tmp_path):
    spec = full_spec()
    write_task_dir(spec, tmp_path / "t")
    with pytest.raises(ValueError, match="not empty"):
        write_task_dir(spec, tmp_path / "t")
    write_task_dir(spec.model_copy(update={"seed": 7}), tmp_path / "t", overwrite=True)
    assert load_task_dir(tmp_path / "t").seed == 7


def test_image_task_without_dockerfile_needs_image(tmp_path):
    spec = full_spec()
    folder = write_task_dir(spec, tmp_path / "t")
    (folder / "Dockerfile").unlink()
    with pytest.raises(TaskFormatError) as e:
        load_task_dir(folder)
    assert (e.value.file, e.value.field) == ("task.yaml", "image")


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, file, field, words",
    [
        ("no-tests", "tests/", "tests/", "missing"),
        ("tb-no-tests", "tests/", "tests/", "missing"),
        ("bad-yaml", "task.yaml", "line 4", "flow sequence on line 3"),
        ("bad-timeout", "task.yaml", "max_agent_timeout_sec", "greater than 0"),
        ("unknown-key", "task.yaml", "dificulty", "unknown key"),
        ("bad-toml", "task.toml", "line 4", ""),
        ("bad-toml-field", "task.toml", "agent.timeout_sec", "ten minutes"),
        ("tb-bad-difficulty", "task.yaml", "difficulty", "trivial"),
    ],
)
def test_broken_fixture_names_folder_file_and_field(name, file, field, words):
    with pytest.raises(TaskFormatError) as e:
        load_task_dir(BROKEN / name)
    err = e.value
    assert (err.file, err.field) == (file, field)
    line = str(err)
    assert "\n" not in line and line.startswith(str(BROKEN / name)) and f": {file}: {field}: " in line
    assert words in line
    assert str(pickle.loads(pickle.dumps(err))) == line


def test_load_tasks_keeps_going_past_broken_folders():
    specs, errors = load_tasks(str(FIXTURES))
    assert sorted(s.id for s in specs) == ["backup-notes", "csv-total", "hello-image", "word-count"]
    assert sorted(Path(e.folder).name for e in errors) == sorted(p.name for p in BROKEN.iterdir())
    assert load_tasks(str(FIXTURES), families=["harbor"])[0][0].family == "harbor"
    assert load_tasks(str(FIXTURES), split="train")[0] == []
    one, none = load_tasks(str(TB / "word-count"))
    assert [s.id for s in one] == ["word-count"] and none == []


def test_missing_tasks_dir_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_tasks(str(tmp_path / "nope"))
    (tmp_path / "empty-task").mkdir()
    _, errors = load_tasks(str(tmp_path))
    assert [(e.file, e.field) for e in errors] == [("task.yaml", "task.yaml")]


# ---- importers ----------------------------------------------------------------------------------


def test_terminal_bench_import():
    spec = load_task_dir(TB / "word-count")
    assert detect_format(TB / "word-count") == "terminal-bench"
    assert (spec.source, spec.grading, spec.family, spec.split) == (
        "terminal-bench",
        "pytest",
        "terminal-bench",
        "heldout",
    )
    assert (spec.agent_timeout_s, spec.test_timeout_s, spec.workdir, spec.difficulty) == (360, 60, "/app", "easy")
    assert spec.instruction.startswith("The file /app/poem.txt")
    assert set(spec.tests) == {"run-tests.sh", "test_outputs.py"}
    run = spec.tests["run-tests.sh"]
    assert not [ln for ln in live_lines(run) if ln.lstrip().startswith(ONLINE)], run
    assert "python3 -m pytest $TEST_DIR/test_outputs.py -rA" in live_lines(run)
    assert 'export TEST_DIR="${TEST_DIR:-/tests}"' in run and run.startswith("#!/bin/bash\n")
    assert "# [ale:offline] uv run pytest $TEST_DIR/test_outputs.py -rA" in run
    docker = spec.environment.dockerfile
    assert "\nFROM rock/base:bookworm\n" in docker and "# [ale:offline] FROM ghcr.io/laude-institute" in docker
    assert not [ln for ln in live_lines(docker) if "apt-get" in ln]
    assert spec.environment.files == {"poem.txt": (TB / "word-count" / "poem.txt").read_text()}
    assert spec.solution == (TB / "word-count" / "solution.sh").read_text()


def test_terminal_bench_solution_yaml_and_partial_run_step():
    spec = load_task_dir(TB / "backup-notes")
    assert spec.solution_steps == [
        "ls /app/notes",
        "tar -czf /app/backup.tar.gz -C /app notes",
        "tar -tzf /app/backup.tar.gz",
    ]
    assert spec.solution.splitlines()[1:] == spec.solution_steps
    assert spec.difficulty == "medium" and spec.environment.files == {}
    # the apt-get chain keeps its offline part; the RUN that writes the notes is untouched
    assert "RUN rm -rf /var/lib/apt/lists/*" in live_lines(spec.environment.dockerfile)
    assert "printf 'buy milk\\n' > /app/notes/monday.txt" in spec.environment.dockerfile


def test_harbor_import():
    spec = load_task_dir(HARBOR / "csv-total")
    assert (spec.source, spec.grading, spec.family, spec.split) == ("harbor", "reward_file", "harbor", "heldout")
    assert (spec.agent_timeout_s, spec.test_timeout_s, spec.workdir) == (600, 120, "/app")
    assert spec.test_entry == "test.sh" and set(spec.tests) == {"test.sh", "test_outputs.py"}
    test = spec.tests["test.sh"]
    assert "python3 -m pytest /tests/test_outputs.py -rA" in live_lines(test)
    assert "--ctrf" not in "\n".join(live_lines(test))
    assert "if [ $? -eq 0 ]; then" in test and "echo 1 > /logs/verifier/reward.txt" in test
    assert not [ln for ln in live_lines(test) if ln.lstrip().startswith(ONLINE)]
    assert spec.environment.files == {"sales.csv": (HARBOR / "csv-total/environment/sales.csv").read_text()}
    assert "FROM rock/base:bookworm" in spec.environment.dockerfile
    assert spec.solution.startswith("#!/bin/bash") and spec.solution_files == {}
    image_only = load_task_dir(HARBOR / "hello-image")
    assert image_only.environment.image == "rock/base:bookworm" and image_only.environment.dockerfile is None


def test_rewritten_scripts_are_valid_bash():
    for spec in load_tasks(str(FIXTURES))[0]:
        entry = spec.tests[spec.test_entry]
        subprocess.run(["bash", "-n"], input=entry, text=True, check=True)


def test_imported_task_exports_to_our_format_and_back(tmp_path):
    for src in (TB / "word-count", HARBOR / "csv-total"):
        spec = load_task_dir(src)
        assert load_task_dir(write_task_dir(spec, tmp_path / spec.id)) == spec


# ---- the offline rule ---------------------------------------------------------------------------

SCRIPT = """#!/bin/bash
set -e
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y curl
curl -LsSf https://astral.sh/uv/0.7.13/install.sh | sh
source $HOME/.local/bin/env
uv venv .tbench-testing && source .tbench-testing/bin/activate
uv pip install pytest==8.4.1 \\
    pandas==2.0.3
python -m pip install requests
wget -q https://example.com/data.csv
wget -q http://127.0.0.1:8000/health
curl -s http://localhost:8000/ | grep ok
if ! command -v uv; then
  curl -LsSf https://astral.sh/uv/install.sh | sh
fi
cat > /tmp/notes <<EOF
pip install stays in a heredoc
EOF
apt-get install -y git && mkdir -p /data && echo kept
uv run --with numpy pytest tests/test_a.py -rA
uvx -p 3.13 -w pytest==8.4.1 pytest --ctrf /logs/verifier/ctrf.json /tests/test_b.py -rA
uv run python check.py
"""


def test_offline_rule_on_a_script():
    out = offline.rewrite_script(SCRIPT)
    live = live_lines(out)
    assert live == [
        "set -e",
        "wget -q http://127.0.0.1:8000/health",
        "curl -s http://localhost:8000/ | grep ok",
        "if ! command -v uv; then",
        "fi",
        "cat > /tmp/notes <<EOF",
        "pip install stays in a heredoc",
        "EOF",
        "mkdir -p /data && echo kept",
        "python3 -m pytest tests/test_a.py -rA",
        "python3 -m pytest /tests/test_b.py -rA",
        "python3 check.py",
    ]
    assert "true  # [ale:offline] uv pip install pytest==8.4.1 \\\n# [ale:offline]     pandas==2.0.3" in out
    assert offline.rewrite_script(out) == out  # idempotent
    subprocess.run(["bash", "-n"], input=out, text=True, check=True)


def test_offline_rule_keeps_work_in_a_chain():
    assert offline.rewrite_command("apt-get update && apt-get install -y x && make") == "make"
    assert offline.rewrite_command("cd /app; pip install -e . ; pytest -q") == "cd /app; true ; pytest -q"
    assert offline.rewrite_command("apt-get update && apt-get install -y x") is None
    assert offline.rewrite_command("echo 'apt-get install x' > notes") == "echo 'apt-get install x' > notes"


def test_from_mapping():
    assert offline.map_image("ubuntu:24.04") == "rock/base:bookworm"
    assert offline.map_image("python:3.13-slim-bookworm") == "rock/base:bookworm"
    assert offline.map_image("ghcr.io/laude-institute/t-bench/python-3-13:20250620") == "rock/base:bookworm"
    assert offline.map_image("nvidia/cuda:12.4.0-devel") is None
    custom = (("corp/*", "corp-local:1"),)
    assert (
        offline.map_image("corp/base:7", custom) == "corp-local:1" and offline.map_image("ubuntu:24.04", custom) is None
    )
    docker = "FROM debian:bookworm AS build\nRUN make\nFROM build\nFROM nvidia/cuda:12.4.0-devel\n"
    out = offline.rewrite_dockerfile(docker)
    assert out.splitlines() == [
        "# [ale:offline] FROM debian:bookworm AS build  (mapped by configs/tasks/images.yaml)",
        "FROM rock/base:bookworm AS build",
        "RUN make",
        "FROM build",
        "FROM nvidia/cuda:12.4.0-devel",
    ]
    assert out.endswith("\n")


# ---- roll tasks ---------------------------------------------------------------------------------


def test_cli_list_show_export(tmp_path, capsys):
    assert roll_main(["tasks", "list", "--tasks", str(TB)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["id", "family", "split", "difficulty", "steps"]
    assert out[1].split() == ["backup-notes", "terminal-bench", "heldout", "medium", "1"] and out[-1] == "2 tasks"

    assert roll_main(["tasks", "list", "--tasks", str(FIXTURES), "--families", "harbor"]) == 1  # broken ones skipped
    cap = capsys.readouterr()
    assert cap.out.splitlines()[-1] == "2 tasks, 8 folders skipped"
    assert "roll: skipped: " in cap.err and "dificulty: unknown key" in cap.err

    assert roll_main(["tasks", "show", "csv-total", "--tasks", str(HARBOR)]) == 0
    shown = capsys.readouterr().out
    assert "grading: reward_file" in shown and "----- tests/test.sh" in shown and "python3 -m pytest" in shown
    assert "# [ale:offline] FROM python:3.13-slim-bookworm" in shown and "----- solution.sh" in shown

    assert roll_main(["tasks", "show", "nope", "--tasks", str(HARBOR)]) == 2
    assert "no task 'nope'" in capsys.readouterr().err

    assert roll_main(["tasks", "export", str(tmp_path / "out"), "--tasks", str(FIXTURES / "harbor")]) == 0
    assert "wrote 2 task folders" in capsys.readouterr().out
    back, errors = load_tasks(str(tmp_path / "out"))
    assert errors == [] and sorted(back, key=lambda s: s.id) == load_tasks(str(HARBOR))[0]
    assert roll_main(["tasks", "export", str(tmp_path / "out"), "--tasks", str(HARBOR)]) == 2  # exists: --force
    assert roll_main(["tasks", "export", str(tmp_path / "out"), "--tasks", str(HARBOR), "--force"]) == 0


def test_cli_on_the_generated_suite(tmp_path, capsys):
    assert roll_main(["tasks", "list", "--split", "heldout", "--families", "create_file"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:-1]
    assert rows and all(r.split()[1:3] == ["create_file", "heldout"] for r in rows)
    assert roll_main(["tasks", "show", "create_file-3"]) == 0
    assert "family: create_file" in capsys.readouterr().out
    assert roll_main(["tasks", "export", str(tmp_path), "--families", "create_file", "--split", "train"]) == 0
    specs, _ = load_tasks(str(tmp_path))
    assert specs and all(s.family == "create_file" and s.split == "train" for s in specs)


def test_terminal_bench_parser_other_than_pytest_is_refused(tmp_path):
    import shutil

    folder = shutil.copytree(TB / "word-count", tmp_path / "word-count")
    text = (folder / "task.yaml").read_text().replace("parser_name: pytest", "parser_name: swebench")
    (folder / "task.yaml").write_text(text)
    with pytest.raises(TaskFormatError) as e:
        load_task_dir(folder)
    assert (e.value.file, e.value.field) == ("task.yaml", "parser_name") and "swebench" in str(e.value)
