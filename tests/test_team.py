"""The team workflow with DVC's own engines: a shared remote and the experiment queue.

A copy of the project (``cifar_dvc.demo.copy_project``) with the synthetic data set and one small
``cnn`` variant reproduces ``evaluate@cnn`` (fetch, ingest, prepare, custom, train, evaluate) and
pushes to a local folder remote. Then:

- round trip: a fresh ``git clone`` pulls; the models and metrics are there, ``dvc status`` says
  up to date, ``dvc metrics diff`` against the first clone's branch works, and
  ``cifar-dvc-serve`` serves the pulled model on 127.0.0.1;
- the same round trip over ``ssh://127.0.0.1`` (dvc-ssh) against a throw-away ``sshd`` started by
  the test, skipped with its reason where sshd or dvc-ssh is missing;
- queue: two learning rates queued with ``dvc exp run --queue -S`` run with
  ``dvc queue start --jobs 2``; ``dvc exp show`` lists both with metrics; the workspace is untouched.

Every server the tests start (sshd, the web demo) listens on 127.0.0.1 only and is killed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cifar_dvc.datasets.synthetic import class_names
from cifar_dvc.demo import copy_project, dvc_env, run_dvc

pytestmark = pytest.mark.slow

OVERRIDES = {
    "data": {"dataset": "synthetic",
             "synthetic": {"num_classes": 10, "train_per_class": 30, "test_per_class": 10, "image_size": 16}},
    "train": {"max_epochs": 1, "verbose": "epoch"},
    "custom": {"sweep_divisors": [], "compare_resample": None},
    # Evaluation's extra suites off (tested in test_corruptions.py and test_adapt.py): here the
    # stage must run, be cached, pushed and pulled; each queued experiment evaluates again.
    "evaluate": {"corruptions": [], "adapt_bn": False},
    # The report's figures at their smallest: the round trip needs the stage, not the pictures.
    "report": {"examples": {"count": 4}, "misclassified": {"max_images": 4},
               "filters": {"steps": 2, "layers": 1, "filters": 2},
               "class_ideal": {"steps": 2, "classes": 2}, "activations": {"layers": 1, "filters": 2},
               "occlusion": {"max_images": 1, "stride": 8}},
}
# The only variant of the copy: the pipeline's foreach makes train@cnn and evaluate@cnn of it.
CNN = {"model": "cnn", "model_args": {"filters": 8}, "epochs": 1, "batch_size": 32,
       "optimizer": {"name": "adam", "learning_rate": 0.003}}
TARGET = "evaluate@cnn"  # what a queued experiment or a teammate's change re-runs
PULLED = ["models/cnn.keras", "models/cnn.json", "dvclive/cnn/metrics.json", "data/prepared/test.npz",
          "eval/cnn/results.json", "plots/report/curves.csv"]
TIMEOUT = 300  # seconds for any one command: a stuck dvc must not hang the suite
QUEUE_TIMEOUT = 600  # seconds for the two queued experiments, on a machine loaded several times over
ASK_EVERY = 30  # seconds between `dvc queue status` calls while no experiment ref says it is done


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, capture_output=True,
                            text=True, check=True, timeout=TIMEOUT)
    return result.stdout


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tree_size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _photo(path: Path) -> None:
    """A small PNG, committed to git: the custom set of every run (queued ones too) holds it."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (200, 40, 40)).save(path)


def _timed(repo: Path, *args: str) -> float:
    started = time.perf_counter()
    run_dvc(repo, *args)
    return time.perf_counter() - started


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The first clone: the whole pipeline reproduced, committed, pushed to a folder remote."""
    base = tmp_path_factory.mktemp("team")
    repo = copy_project(base / "first", OVERRIDES)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["variants"] = {"cnn": CNN}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _photo(repo / "data" / "custom" / class_names(10)[0] / "tracked.png")
    remote = base / "remote"
    run_dvc(repo, "remote", "add", "-d", "team", str(remote))
    figures = {"repro_seconds": _timed(repo, "repro")}
    figures["push_seconds"] = _timed(repo, "push")
    figures["remote_files"], figures["remote_bytes"] = _tree_size(remote)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one small pipeline, reproduced and pushed")
    return {"repo": repo, "remote": remote, "base": base, "figures": figures}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A background process in its own session, output to ``log`` (a pipe could fill and block
    it), killed with its group at the end whatever happens. Runs in ``log``'s folder."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
            return
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout} s")


def _post_photo(url: str, png: bytes) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _check_clone(origin: dict, clone: Path) -> None:
    """What a teammate's fresh clone must have after ``dvc pull``."""
    first = origin["repo"]
    for name in PULLED:
        assert _md5(clone / name) == _md5(first / name), name
    assert json.loads((clone / "metrics" / "cnn.json").read_text()) == \
        json.loads((first / "metrics" / "cnn.json").read_text())  # in git: no pull needed
    assert "Data and pipelines are up to date" in run_dvc(clone, "status").stdout


def test_push_then_pull_into_a_fresh_clone(origin: dict, tmp_path: Path) -> None:
    clone = tmp_path / "second"
    _git(tmp_path, "clone", "-q", str(origin["repo"]), str(clone))
    assert not (clone / "models" / "cnn.keras").exists()
    pull_seconds = _timed(clone, "pull")
    _check_clone(origin, clone)

    # The web demo serves the pulled model. Started first: its start-up (TensorFlow, the model)
    # overlaps the re-evaluation below instead of following it.
    port = _free_port()
    serve = Path(sys.executable).parent / "cifar-dvc-serve"
    cmd = [str(serve)] if serve.exists() else [sys.executable, "-m", "cifar_dvc.serve.app"]
    with _process([*cmd, "--model", "models/cnn.keras", "--host", "127.0.0.1", "--port", str(port)],
                  clone / "serve.log", dvc_env()) as proc:
        # The teammate changes only evaluation (one corruption of the suite turned on): the
        # pulled model is used, nothing retrains, and the metrics differ from the first clone's
        # branch by the corruption accuracy alone.
        params = yaml.safe_load((clone / "params.yaml").read_text())
        params["evaluate"].update(corruptions=["brightness"], corruption_images=50)
        (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        rerun = run_dvc(clone, "repro", TARGET).stdout
        assert "Running stage 'evaluate@cnn'" in rerun and "Running stage 'train@cnn'" not in rerun
        diff = json.loads(run_dvc(clone, "metrics", "diff", "origin/main", "--json").stdout)
        changed = diff.get("metrics/cnn.json", {})
        assert "corrupt" in changed and "test" not in changed, diff

        _wait_for(f"http://127.0.0.1:{port}/api/health", proc, clone / "serve.log", timeout=TIMEOUT)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=10) as response:
            info = json.loads(response.read())
        assert info["model"] == "cnn" and info["classes"] == class_names(10)
        png = io.BytesIO()
        from PIL import Image

        Image.new("RGB", (64, 64), (30, 90, 200)).save(png, format="PNG")
        result = _post_photo(f"http://127.0.0.1:{port}/api/predict", png.getvalue())
        assert result["predictions"][0]["label"] in class_names(10)

    f = origin["figures"]
    print(f"\nremote round trip: repro {f['repro_seconds']:.1f} s, push {f['push_seconds']:.1f} s "
          f"({f['remote_files']} files, {f['remote_bytes'] / 1024:.0f} KiB), pull {pull_seconds:.1f} s")


# ---------------------------------------------------------------------------------------------
# The same round trip over SSH, against a throw-away sshd on 127.0.0.1


def _ssh_missing() -> str | None:
    if not Path("/usr/sbin/sshd").is_file():
        return "no sshd (Debian's openssh-server, installed by .ci/run) on this machine"
    try:
        import dvc_ssh  # noqa: F401
    except ImportError:
        return "dvc-ssh is not installed (pip install -e '.[ssh]')"
    if shutil.which("ssh-keygen") is None:
        return "no ssh-keygen"
    return None


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[dict]:
    """An sshd on a free 127.0.0.1 port that accepts one throw-away key for the current user."""
    reason = _ssh_missing()
    if reason:
        pytest.skip(reason)
    folder = tmp_path / "sshd"
    folder.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True,
                       timeout=30)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    (folder / "authorized_keys").chmod(0o600)
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "UsePAM no",
        "PermitRootLogin prohibit-password", "StrictModes no", f"PidFile {folder / 'sshd.pid'}",
        "Subsystem sftp internal-sftp", ""]))
    # sshd refuses to start without its privilege-separation directory (Debian makes it at boot).
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        pytest.skip(f"sshd needs /run/sshd: {exc}")
    with _process(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], folder / "sshd.log") as proc:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None:
                pytest.skip(f"sshd did not start: {_tail(folder / 'sshd.log')}")
            time.sleep(0.2)
        yield {"port": port, "key": folder / "client_key", "user": os.environ.get("USER") or "root"}


def test_push_and_pull_over_ssh(origin: dict, sshd: dict, tmp_path: Path) -> None:
    repo = origin["repo"]
    store = tmp_path / "ssh-remote"
    url = f"ssh://127.0.0.1:{sshd['port']}{store}"
    # --local: the key and user are this machine's, never committed (docs/cluster.md).
    run_dvc(repo, "remote", "add", "--local", "-f", "lab", url)
    run_dvc(repo, "remote", "modify", "--local", "lab", "keyfile", str(sshd["key"]))
    run_dvc(repo, "remote", "modify", "--local", "lab", "user", sshd["user"])
    try:
        push_seconds = _timed(repo, "push", "-r", "lab")
        files, size = _tree_size(store)
        assert (files, size) == (origin["figures"]["remote_files"], origin["figures"]["remote_bytes"])

        clone = tmp_path / "over-ssh"
        _git(tmp_path, "clone", "-q", str(repo), str(clone))
        for args in (("remote", "add", "--local", "lab", url),
                     ("remote", "modify", "--local", "lab", "keyfile", str(sshd["key"])),
                     ("remote", "modify", "--local", "lab", "user", sshd["user"])):
            run_dvc(clone, *args)
        pull_seconds = _timed(clone, "pull", "-r", "lab")
        _check_clone(origin, clone)
    finally:
        run_dvc(repo, "remote", "remove", "--local", "lab", check=False)
    print(f"\nssh round trip: push {push_seconds:.1f} s, pull {pull_seconds:.1f} s ({files} files)")


# ---------------------------------------------------------------------------------------------
# The experiment queue


def _queue_busy(repo: Path) -> bool:
    status = run_dvc(repo, "queue", "status", check=False).stdout
    return any(word in status for word in ("Queued", "Running"))


def _finished(repo: Path, names: set[str]) -> set[str]:
    """The experiments of ``names`` that DVC has committed (``refs/exps/.../<name>``): a git call
    of milliseconds, where each ``dvc queue status`` costs a CPU second and a half of the cores
    the queued runs need."""
    refs = _git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    return {ref.rsplit("/", 1)[-1] for ref in refs} & names


def _wait_for_queue(repo: Path, names: set[str], timeout: float) -> None:
    """Until ``dvc queue status`` shows nothing queued or running. It is asked once every ref is
    there, and every ``ASK_EVERY`` seconds before that (a failed experiment makes no ref)."""
    deadline = time.monotonic() + timeout
    asked = time.monotonic()
    while time.monotonic() < deadline:
        if _finished(repo, names) == names or time.monotonic() - asked > ASK_EVERY:
            if not _queue_busy(repo):
                return
            asked = time.monotonic()
        time.sleep(1)
    pytest.fail(f"the queue did not finish in {timeout} s: {run_dvc(repo, 'queue', 'status').stdout}")


def _processes_in(folder: Path) -> list[int]:
    """Pids whose working directory is ``folder`` or below it (Linux ``/proc``; [] elsewhere)."""
    folder, pids = folder.resolve(), []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if Path(os.readlink(proc / "cwd")).is_relative_to(folder):
                pids.append(int(proc.name))
    return pids


def _stop_queue(repo: Path, grace: float = 15.0) -> list[int]:
    """``dvc queue stop --kill``, then SIGTERM (SIGKILL after ``grace``) whatever still runs in the
    repository; returns those pids. DVC's ``queue start`` forks detached workers, and one was seen
    outliving ``queue stop`` by 20 minutes, idle, after the test had passed."""
    run_dvc(repo, "queue", "stop", "--kill", check=False)
    deadline = time.monotonic() + grace
    while _processes_in(repo) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = _processes_in(repo)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _processes_in(repo):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while _processes_in(repo) and time.monotonic() < deadline:
            time.sleep(0.5)
    return leftover


def test_queued_sweep_runs_two_jobs_and_leaves_the_workspace_alone(origin: dict) -> None:
    repo = origin["repo"]
    before = {name: _md5(repo / name) for name in ("params.yaml", "dvc.lock", "models/cnn.keras")}
    rates = {"lr-high": 0.01, "lr-low": 0.001}
    for name, rate in rates.items():
        run_dvc(repo, "exp", "run", "--queue", "-n", name, "-S",
                f"variants.cnn.optimizer.learning_rate={rate}", TARGET)
    started = time.perf_counter()
    try:
        run_dvc(repo, "queue", "start", "--jobs", "2")
        _wait_for_queue(repo, set(rates), QUEUE_TIMEOUT)
        seconds = time.perf_counter() - started
    finally:
        leftover = _stop_queue(repo)

    status = run_dvc(repo, "queue", "status").stdout
    assert status.count("Success") == 2, status
    shown = json.loads(run_dvc(repo, "exp", "show", "--json").stdout)
    experiments = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                if rev.get("name") in rates:
                    experiments[rev["name"]] = data
    assert set(experiments) == set(rates), shown
    results = {}
    for name, data in experiments.items():
        lr = data["params"]["params.yaml"]["data"]["variants"]["cnn"]["optimizer"]["learning_rate"]
        assert lr == rates[name]
        metrics = data["metrics"]["metrics/cnn.json"]["data"]
        # An empty custom set has a null accuracy: a number says the git-tracked photo got there.
        assert metrics["custom"] is not None, "the git-tracked photo reaches the queued run"
        results[name] = (metrics["val"], metrics["test"])
    table = run_dvc(repo, "exp", "show", "--md", "--no-pager", "--only-changed").stdout
    assert all(name in table for name in rates)

    assert {name: _md5(repo / name) for name in before} == before, "the workspace must stay as it was"
    assert _git(repo, "status", "--porcelain") == ""
    runs = ", ".join(f"{name} (lr {rates[name]}): val acc {v:.3f}, test acc {t:.3f}"
                      for name, (v, t) in results.items())
    print(f"\nqueue of 2 (--jobs 2): {seconds:.1f} s; {runs}; "
          f"workers left after `queue stop`: {leftover or 'none'}\n{table}")
