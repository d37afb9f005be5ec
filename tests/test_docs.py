"""The documentation runs as written. Every shell command in README.md and docs/ runs, page by page and in order,
in a folder of its own, against the servers the page itself starts, and must exit 0 with an answer; every Python
example runs too. The few changes made to the commands are listed here (REWRITES), and so are the commands that
run in another test because they need what this one cannot have (ELSEWHERE): a container engine, Redis, a GPU,
minutes of benchmarking. The site builds with `mkdocs build --strict` (no broken links), and the README stays a
front page."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.common import free_port
from tests.helpers import KOREAN

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
COMMAND_TIMEOUT_S = 300
INSTALL = re.compile(r"^python3 -m venv \.venv && \. \.venv/bin/activate && pip install [^&]+&& ")  # what CI does first

ELSEWHERE = [  # (a command that matches this, the test that runs it instead, words that test must hold)
    (r"&& pytest$", ".ci/run", "&& pytest"),
    (r"^docker ", "tests/test_docker.py", '"docker"'),
    (r"^python -m build", "tests/test_wheel.py", '"-m", "build"'),
    (r"^python -m bench\.throughput", "tests/test_bench.py", "bench.throughput"),
    (r"^python -m bench\.step_latency", "tests/test_bench.py", "bench.step_latency"),
    (r"^python -m bench\.state_store", "tests/test_bench.py", "bench.state_store"),
    (r"^python -m bench\.profile_server", "tests/test_bench.py", "bench.profile_server"),
    (r"^python -m bench\.large_request", "tests/test_bench.py", "bench.large_request"),
    (r"^python -m bench\.vad", "tests/test_bench.py", "bench.vad"),
    (r"^python -m bench\.numbers", "tests/test_bench.py", "bench.numbers"),
    (r"^python -m bench\.peers|/opt/peers|^apt-get install libb64-0d$", "tests/test_peers.py", "/opt/peers"),  # the peers' venv
    (r"^torchrun ", "tests/test_distributed.py", "torch.distributed.run"),
    (r"^perf_analyzer ", "tests/test_perf_analyzer.py", "perf_analyzer"),
    (r"--native-port|--target 127\.0\.0\.1:8001", "tests/test_native_front.py", '"--native-port"'),  # needs gRPC's C++ library
    (r"^apt-get install g\+\+ pkg-config libgrpc", ".ci/run", "libgrpc++-dev"),
    (r"^python examples/word_lm\.py", "tests/test_user_models.py", "word_lm.py"),
    (r"--state-store redis://|--service rnnserve\.StateStore", "tests/test_store.py", "rnnserve.StateStore"),
    (r"--quantize int8", "tests/test_quantize.py", 'quantize="int8"'),
]
REWRITES = [  # (pattern, replacement): budgets cut to seconds; the well-known ports made free ones (see Page.ports)
    (r"(^rnnserve train .*)--minutes [0-9.]+", r"\1--steps 5"),
]
ANSWERING = ("generate", "stream", "infer", "models", "health", "snapshot", "restore", "fork", "token", "describe", "export", "plot", "score")  # print a result


@dataclass
class Page:
    """A page's commands running in its own folder: the ports its commands name, made free ones, and the server
    it started last (a page starts a server afresh after exporting)."""

    folder: Path
    ports: dict[str, str]
    server: subprocess.Popen | None = None

    def run(self, command: str) -> None:
        command = self.rewritten(command)
        if re.match(r"^(\w+=\S* )*rnnserve serve\b", command):
            return self.serve(command.removesuffix("&").strip())
        done = subprocess.run(self.bash(command), cwd=self.folder, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=self.env())
        assert done.returncode == 0, f"{command}\nexit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        program = command.split("|")[-1].split()
        if program[:1] == ["rnnserve"] and program[1] in ANSWERING:
            said_why = program[1] == "generate" and done.stderr.startswith("(no text: ")  # a sampled end token first
            assert done.stdout.strip() or said_why, f"{command}: printed nothing"
        if program[:2] == ["rnnserve", "stream"]:
            assert " → " in done.stdout, f"{command}: no step predictions\n{done.stdout}"

    def rewritten(self, command: str) -> str:
        command = INSTALL.sub("", command)
        for pattern, replacement in REWRITES:
            command = re.sub(pattern, replacement, command)
        return self.on_free_ports(command)

    def on_free_ports(self, text: str) -> str:
        for known, free in self.ports.items():
            text = re.sub(rf"(?<=[: \"]){known}\b", free, text)
        return text

    def bash(self, command: str) -> list[str]:
        """Each command in bash of its own, the variables a command exported carried to the next (as one shell would)."""
        return ["bash", "-c", f"set -o pipefail; source .exported 2>/dev/null; {command}\nrc=$?; export -p > .exported; exit $rc"]

    def env(self) -> dict[str, str]:
        return {
            **os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RNNSERVE_TARGET": f"127.0.0.1:{self.ports['50051']}",
            "RNNSERVE_PORT": self.ports["50051"], "DEMO_MINUTES": "0.05", "DEMO_DIR": str(self.folder / "demo"),
        }

    def serve(self, command: str) -> None:
        """`rnnserve serve … &`: the page's previous server stops, this one starts, and the page goes on once it listens."""
        self.stop()
        log = (self.folder / "server.log").open("w")
        self.server = subprocess.Popen(self.bash(f"exec env {command}"), cwd=self.folder, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env())
        line = self.server.stdout.readline()
        if "listening on" not in line:
            self.server.wait(30)
            raise AssertionError(f"{command}: did not start\n{line}{(self.folder / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.send_signal(signal.SIGTERM)
            self.server.communicate(timeout=60)
            self.server = None


def commands(text: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and blank lines left out."""
    lines = text.replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def elsewhere(command: str) -> tuple[str, str] | None:
    for pattern, test, words in ELSEWHERE:
        if re.search(pattern, command):
            return test, words
    return None


def given(folder: Path, page: str, corpus_file: Path, repository: Path) -> None:
    """What a page's text says a reader already has: a clone's files, a text of their own, Korean text, a graph
    exported by their own code, Penn Treebank's three files (a small stand-in), and for the pages that serve without training first, a model repository."""
    for name in ("scripts", "examples", "deploy"):
        (folder / name).symlink_to(ROOT / name)
    shutil.copy(corpus_file, folder / "my_text.txt")
    (folder / "ko.txt").write_text(KOREAN * 100, encoding="utf-8")
    from tests.test_word_level import TEST, TRAIN, VALID  # a standard split's three files, small

    for name, text in (("train", TRAIN * 20), ("valid", VALID), ("test", TEST)):
        (folder / f"ptb.{name}.txt").write_text(text)
    if page == "docs/own-models.md":
        from tests.test_user_models import GruLM, exported_elsewhere

        exported_elsewhere(GruLM().eval(), folder / "gru.onnx")
    if page in ("docs/deploying.md", "docs/reliability.md", "docs/performance.md"):
        shutil.copytree(repository / "lstm", folder / "models" / "lm")


@pytest.mark.parametrize("page", PAGES)
def test_every_command_of_a_page_runs_as_written(page, tmp_path, corpus_file, repository):
    given(tmp_path, page, corpus_file, repository)
    running = Page(tmp_path, {known: str(free_port()) for known in ("50051", "8000", "8002")})
    try:
        for language, text in FENCE.findall((ROOT / page).read_text(encoding="utf-8")):
            if language == "bash":
                for command in commands(text):
                    if elsewhere(command) is None:
                        running.run(command)
            elif language == "python":
                script = tmp_path / "example.py"
                script.write_text(running.on_free_ports(text))
                done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
                assert done.returncode == 0, f"{page}: a Python example failed\n{text}\n{done.stderr[-3000:]}"
            elif language == "toml" and text.startswith("# "):  # a file the page shows, named in its first line
                (tmp_path / text.splitlines()[0][2:].strip()).write_text(text)
    finally:
        running.stop()


def test_commands_that_run_elsewhere_are_run_there():
    matched = set()
    for page in PAGES:
        for language, text in FENCE.findall((ROOT / page).read_text(encoding="utf-8")):
            for command in commands(text) if language == "bash" else ():
                found = elsewhere(command)
                if found is not None:
                    test, words = found
                    assert words in (ROOT / test).read_text(), f"{page}: `{command}` is said to run in {test}, which does not hold {words!r}"
                    matched.add(test)
    assert ".ci/run" in matched and "tests/test_docker.py" in matched


def test_the_docs_build_into_a_site_with_no_broken_links(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
        text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "serving" / "index.html").exists()


def test_the_readme_is_a_front_page_whose_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), f"README links to {target}, which is not there"


def test_ci_runs_the_readme_test_command_exactly():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command.endswith("&& pytest")
    assert ci_command in (ROOT / "README.md").read_text().splitlines()
