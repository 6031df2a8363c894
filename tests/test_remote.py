"""Share data and models through a DVC remote on a real S3-protocol server (README "Share data and models").

The server is moto's standalone server (`moto[server]`), started on a free localhost port by this module and
stopped by it, with credentials checked (IAM on, a user with an access key and an s3:* policy). Nothing in DVC,
s3fs or boto is patched: DVC's own `dvc-s3` plugin talks HTTP to it through `endpointurl`.

The journey: the CI-sized pipeline runs in clone A, `dvc push`; a fresh clone B `dvc pull`s, then reports
nothing to do (`dvc status`, `dvc status -c`, `dvc repro`) and holds byte-identical outputs. An experiment run
in A goes through `dvc exp push` and `dvc exp pull` + `dvc exp apply` in B. Failure paths: wrong credentials, a
missing bucket, an object missing on the remote, and the server stopped: each gives one ERROR line that names
the cause, and nothing local is lost or half-written.
"""

import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["zoo", "ingest", "train", "encode", "reconstruct", "evaluate", "probe"]
BUCKET = "weightvae-remote"
REMOTE = f"s3://{BUCKET}/store"
#: the machine's proxy settings (names only), which the test clears (`_env`, `_no_proxy`); named in failures
MACHINE_PROXY_VARS = sorted(k for k in os.environ if "proxy" in k.lower())
#: what a signature mismatch depends on, named in failures (moto 5.2.1 rejects botocore 1.43's signatures)
VERSIONS = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("moto", "botocore", "aiobotocore", "s3fs"))
#: IAM requests moto answers before it starts checking credentials: exactly those of `_bootstrap`.
BOOTSTRAP_ACTIONS = 4


class MotoServer:
    """moto's standalone S3 server in a subprocess on a free localhost port."""

    def __init__(self, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_ACTIONS)}
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _bootstrap(url: str) -> dict[str, str]:
    """A user with an access key allowed s3:*, and the bucket: the server's only unauthenticated requests."""
    import boto3

    kw = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "bootstrap",
          "aws_secret_access_key": "bootstrap"}
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="weightvae-ci")
    iam.put_user_policy(UserName="weightvae-ci", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="weightvae-ci")["AccessKey"]
    boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def _env(tmp: Path, credentials: dict[str, str]) -> dict[str, str]:
    # no AWS settings of the machine's, and no proxy: a proxy between the client and the localhost server would
    # rewrite requests, and S3 would then reject their signatures
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
    return {**env, **credentials, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-creds"),
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "2",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@weightvae", "GIT_COMMITTER_NAME": "ci",
            "GIT_COMMITTER_EMAIL": "ci@weightvae"}


class World:
    """The server, the git remote and the clones, with one way to run a command in a clone."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.server = MotoServer(tmp / "moto.log")
        self.env = _env(tmp, _bootstrap(self.server.url))

    def run(self, cmd: list[str], cwd: Path, ok: bool = True) -> str:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=self.env, check=False)
        text = out.stdout + out.stderr
        if ok:
            assert out.returncode == 0, (f"{' '.join(cmd)} failed ({VERSIONS}; proxy variables cleared: "
                                         f"{MACHINE_PROXY_VARS}):\n"
                                         f"{text[-4000:]}")
        else:
            assert out.returncode != 0, f"{' '.join(cmd)} should have failed:\n{text[-4000:]}"
        return text

    def clone(self, name: str) -> Path:
        self.run(["git", "clone", "-q", str(self.tmp / "origin.git"), name], self.tmp)
        return self.tmp / name


def _copy_repo(dst: Path) -> None:
    """This working tree's tracked and new files, generated data excluded (model_data/.gitignore kept, so git
    ignores what it ignores in the project), with the CI-sized params (as tests/test_pipeline.py)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file() and (f == "model_data/.gitignore" or not f.startswith(("model_data/", "metrics/"))):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    (dst / "dvc.lock").unlink(missing_ok=True)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for section, values in yaml.safe_load((ROOT / "tests" / "ci_params.yaml").read_text()).items():
        params[section].update(values)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _digests(repo: Path) -> dict[str, str]:
    """sha256 of every file under model_data/ (the pipeline's cached outputs)."""
    return {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((repo / "model_data").rglob("*")) if p.is_file() and p.name != ".gitignore"}


def _errors(text: str) -> list[str]:
    errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
    print("\n".join(errors))  # shown with pytest -s: the lines the README quotes
    return errors


@pytest.fixture(scope="module", autouse=True)
def _no_proxy():
    """This process's own requests to the server (boto3, urllib) bypass any proxy of the machine's, as `_env`'s."""
    with pytest.MonkeyPatch.context() as mp:
        for k in [k for k in os.environ if "proxy" in k.lower()]:
            mp.delenv(k)
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Clone A after `dvc repro` and `dvc push`, its commit on the bare git remote `origin.git`."""
    tmp = tmp_path_factory.mktemp("remote")
    w = World(tmp)
    try:
        w.run(["git", "init", "-q", "--bare", "-b", "main", "origin.git"], tmp)
        a = tmp / "a"
        a.mkdir()
        _copy_repo(a)
        for cmd in (["git", "init", "-q", "-b", "main"], ["git", "remote", "add", "origin", str(tmp / "origin.git")],
                    ["dvc", "remote", "add", "-d", "storage", REMOTE],
                    ["dvc", "remote", "modify", "storage", "endpointurl", w.server.url],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "CI-sized params, S3 remote"]):
            w.run(cmd, a)
        out = w.run(["dvc", "repro"], a)
        for stage in STAGES:
            assert f"Running stage '{stage}'" in out
        w.repro_log = out
        w.run(["git", "add", "-A"], a)
        w.run(["git", "commit", "-qm", "dvc repro"], a)
        w.run(["git", "push", "-q", "origin", "main"], a)
        w.push_log = w.run(["dvc", "push"], a)
        w.a, w.main = a, _digests(a)
        yield w
    finally:
        w.server.stop()


def test_stages_show_one_progress_line_each_off_a_terminal(world):
    """`dvc repro` here is not attached to a terminal: each long stage prints one progress line, no bar."""
    log = world.repro_log
    for stage, unit in (("zoo", "runs"), ("ingest", "files"), ("reconstruct", "networks"), ("evaluate", "networks")):
        lines = [line for line in log.splitlines() if line.startswith(f"{stage}: ") and f" {unit}/s)" in line]
        assert len(lines) == 1, (stage, log[-3000:])
    assert "\r" not in log  # no bar redrawn in the log


def test_a_fresh_clone_pulls_everything_and_has_nothing_to_do(world):
    b = world.clone("b")
    world.run(["dvc", "pull"], b)
    assert "Data and pipelines are up to date." in world.run(["dvc", "status"], b)
    assert "Cache and remote 'storage' are in sync." in world.run(["dvc", "status", "-c"], b)
    assert "Running stage" not in world.run(["dvc", "repro"], b)
    pulled = _digests(b)
    assert pulled == world.main  # every output, byte for byte
    assert {"model_data/models/vae.ckpt", "model_data/models/lightning/last.ckpt"} <= set(pulled)
    recons = [p for p in pulled if p.startswith("model_data/reconstructions/")]
    assert any(p.endswith(".safetensors") for p in recons) and any(p.endswith(".pt") for p in recons)
    for metrics in ("metrics/eval.json", "metrics/ingest.json", "metrics/zoo.json"):  # git carries these
        assert (b / metrics).read_text() == (world.a / metrics).read_text()


def test_an_experiment_travels_with_exp_push_and_exp_pull(world):
    a, b = world.a, world.tmp / "b"
    out = world.run(["dvc", "exp", "run", "-n", "two-samples", "-S", "reconstruct.n_samples=2"], a)
    assert {s for s in STAGES if f"Running stage '{s}'" in out} == {"reconstruct", "evaluate"}
    exp_metrics = (a / "metrics/eval.json").read_text()
    exp_outputs = _digests(a)
    assert exp_outputs != world.main and json.loads(exp_metrics)["groups"]["digits/cnn"]["samples"]["count"] == 2
    world.run(["dvc", "exp", "push", "origin", "two-samples"], a)
    world.run(["dvc", "exp", "pull", "origin", "two-samples"], b)
    assert "two-samples" in world.run(["dvc", "exp", "list", "--name-only"], b)
    world.run(["dvc", "exp", "apply", "two-samples"], b)
    assert yaml.safe_load((b / "params.yaml").read_text())["reconstruct"]["n_samples"] == 2
    assert (b / "metrics/eval.json").read_text() == exp_metrics
    assert _digests(b) == exp_outputs  # the experiment's reconstructions came from the S3 remote
    assert "Data and pipelines are up to date." in world.run(["dvc", "status"], b)
    for repo in (a, b):  # both back to main's outputs for the next tests
        world.run(["git", "checkout", "-q", "--", "."], repo)
        world.run(["dvc", "checkout", "-q"], repo)
        assert _digests(repo) == world.main


def test_wrong_credentials_one_line_and_nothing_local_changes(world):
    c = world.clone("c-creds")
    for key in ("access_key_id", "secret_access_key"):
        world.run(["dvc", "remote", "modify", "--local", "storage", key, "WRONG"], c)
    out = world.run(["dvc", "pull"], c, ok=False)
    errors = _errors(out)
    assert errors and "Forbidden" in errors[0] and "403" in errors[0] and "Traceback" not in out, out
    assert not (c / "model_data" / "models").exists() and not (c / "model_data" / "weights").exists()
    for key in ("access_key_id", "secret_access_key"):
        world.run(["dvc", "remote", "modify", "--local", "storage", key, "WRONG"], world.a)
    try:
        errors = _errors(world.run(["dvc", "push"], world.a, ok=False))
        assert len(errors) == 1 and "Forbidden" in errors[0], errors
    finally:
        (world.a / ".dvc" / "config.local").unlink()
    assert _digests(world.a) == world.main
    assert "Cache and remote 'storage' are in sync." in world.run(["dvc", "status", "-c"], world.a)


def test_a_missing_bucket_one_line(world):
    world.run(["dvc", "remote", "add", "nobucket", "s3://no-such-bucket/store"], world.a)
    world.run(["dvc", "remote", "modify", "nobucket", "endpointurl", world.server.url], world.a)
    try:
        out = world.run(["dvc", "push", "-r", "nobucket"], world.a, ok=False)
        errors = _errors(out)
        assert len(errors) == 1 and "The specified bucket does not exist" in errors[0], out
        assert "NoSuchBucket" in errors[0] and "Traceback" not in out
    finally:
        world.run(["dvc", "remote", "remove", "nobucket"], world.a)


def test_a_pull_that_fails_midway_leaves_no_half_written_output(world):
    """One object of the reconstructions folder is gone from the remote: the pull fails before it checks out
    anything, so no output is there at all, none half; once the object is back, a pull completes it."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=world.server.url, region_name="us-east-1",
                      aws_access_key_id=world.env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=world.env["AWS_SECRET_ACCESS_KEY"])
    lock = yaml.safe_load((world.a / "dvc.lock").read_text())["stages"]
    recon_dir = next(o for o in lock["reconstruct"]["outs"] if o["path"] == "model_data/reconstructions")
    entries = json.loads((world.a / ".dvc/cache/files/md5" / recon_dir["md5"][:2] / recon_dir["md5"][2:]).read_text())
    victim = next(e for e in entries if e["relpath"].endswith(".safetensors"))
    key = f"store/files/md5/{victim['md5'][:2]}/{victim['md5'][2:]}"
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.delete_object(Bucket=BUCKET, Key=key)
    try:
        d = world.clone("d-partial")
        out = world.run(["dvc", "pull"], d, ok=False)
        assert _errors(out) and "NoSuchKey" in out and "Traceback" not in out, out
        assert _digests(d) == {}  # fetched objects wait in the cache; no output is checked out, none half
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    world.run(["dvc", "pull"], d)
    assert _digests(d) == world.main


def test_a_server_that_is_down_one_line_and_nothing_local_lost(world):
    world.server.stop()  # mid-test: the remote goes away
    e = world.clone("e-down")
    out = world.run(["dvc", "pull"], e, ok=False)
    errors = _errors(out)
    assert errors and "Could not connect to the endpoint URL" in errors[0] and "Traceback" not in out, out
    assert not (e / "model_data" / "weights").exists() and not (e / "model_data" / "models").exists()
    errors = _errors(world.run(["dvc", "push"], world.a, ok=False))
    assert len(errors) == 1 and "Could not connect to the endpoint URL" in errors[0], errors
    assert _digests(world.a) == world.main
    assert "Data and pipelines are up to date." in world.run(["dvc", "status"], world.a)
