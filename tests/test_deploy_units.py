"""Deployment pieces that need no federation: PKI, site keys, the registry, the site's policy and
app guard, the proxy configuration, reply attribution and the one-line refusals.

Everything runs for real (cryptography, Flower's FAB builder and key loader, nginx -t, a TLS
socket); the end-to-end checks with a SuperLink, nginx and SuperNodes are in test_deployment.py.
"""

from __future__ import annotations

import hashlib
import shutil
import ssl
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from mammo_fl.common.federation import protocol as P
from mammo_fl.common.federation.round_config import RoundConfig
from mammo_fl.common.training.finetune_config import FineTuneConfig
from mammo_fl.common.utils.errors import ConfigError, MammoError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- coordinator PKI -------------------------------------------------------------------------

def test_init_makes_private_keys_and_a_certificate_for_every_host(tmp_path):
    from cryptography import x509

    from mammo_fl.server.admin import init_home, build_init_parser
    from mammo_fl.server.home import CoordinatorHome
    from mammo_fl.server.pki import certificate_names

    home = CoordinatorHome(tmp_path / "home")
    init_home(build_init_parser().parse_args(["--home", str(home.root), "--host", "coord.example.org"]))
    assert _mode(home.ca_key) == 0o600 and _mode(home.server_key) == 0o600
    assert set(certificate_names(home.server_pem)) == {"coord.example.org", "localhost", "127.0.0.1"}
    ca = x509.load_pem_x509_certificate(home.ca_pem.read_bytes())
    cert = x509.load_pem_x509_certificate(home.server_pem.read_bytes())
    cert.verify_directly_issued_by(ca)

    # A second init never replaces a key; it re-issues the certificate with the new host.
    keys = home.ca_key.read_bytes(), home.server_key.read_bytes(), home.ca_pem.read_bytes()
    init_home(build_init_parser().parse_args(["--home", str(home.root), "--host", "10.1.2.3"]))
    assert (home.ca_key.read_bytes(), home.server_key.read_bytes(), home.ca_pem.read_bytes()) == keys
    assert "10.1.2.3" in certificate_names(home.server_pem)


def test_init_refuses_a_host_that_is_not_a_name(tmp_path, capsys):
    from mammo_fl.server.cli import main

    assert main(["init", "--home", str(tmp_path / "h"), "--host", "bad host!"]) == 2
    err = capsys.readouterr().err.strip()
    assert "neither an IP address nor a DNS name" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "h" / "server.pem").exists()


# --- site keys and the registry --------------------------------------------------------------

def test_keygen_writes_a_pair_flower_accepts_and_never_overwrites(tmp_path):
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    from mammo_fl.client.keys import check_private_key, generate_site_keys

    key, pub = generate_site_keys("hospital-a", tmp_path / "keys")
    assert _mode(key) == 0o600 and key.name == "hospital-a.key" and pub.name == "hospital-a.pub"
    load_ssh_private_key(key.read_bytes(), password=None)  # what flower-supernode reads
    assert try_load_public_key(pub)  # what `flwr supernode register` reads
    check_private_key(key)
    before = key.read_bytes()
    with pytest.raises(ConfigError, match="never overwritten"):
        generate_site_keys("hospital-a", tmp_path / "keys")
    assert key.read_bytes() == before
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        check_private_key(key)


def test_registry_binds_one_key_to_one_name(tmp_path, capsys):
    from mammo_fl.client.keys import generate_site_keys
    from mammo_fl.server.cli import main
    from mammo_fl.server.home import CoordinatorHome
    from mammo_fl.server.sites import load_registry

    home = tmp_path / "home"
    assert main(["init", "--home", str(home), "--host", "127.0.0.1"]) == 0
    _, pub_a = generate_site_keys("site-a", tmp_path / "a")
    _, pub_b = generate_site_keys("site-b", tmp_path / "b")
    assert main(["sites", "add", "site-a", str(pub_a), "--home", str(home)]) == 0
    capsys.readouterr()
    # the same key under another name, another key under a taken name, a bad name, a non-key file
    assert main(["sites", "add", "site-x", str(pub_a), "--home", str(home)]) == 2
    assert "already registered as site site-a" in capsys.readouterr().err
    assert main(["sites", "add", "site-a", str(pub_b), "--home", str(home)]) == 2
    assert "already registered with another key" in capsys.readouterr().err
    assert main(["sites", "add", "../evil", str(pub_b), "--home", str(home)]) == 2
    assert "site name" in capsys.readouterr().err
    assert main(["sites", "add", "site-b", str(tmp_path / "a" / "site-a.key"), "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "not an OpenSSH public key" in err and len(err.strip().splitlines()) == 1
    assert main(["sites", "add", "site-b", str(pub_b), "--home", str(home)]) == 0
    assert main(["sites", "list", "--home", str(home)]) == 0
    listed = capsys.readouterr().out
    assert "site-a" in listed and "site-b" in listed and "SHA256:" in listed
    assert main(["sites", "remove", "site-a", "--home", str(home)]) == 0
    assert set(load_registry(CoordinatorHome(home))) == {"site-b"}
    assert main(["sites", "remove", "site-a", "--home", str(home)]) == 2


def test_sites_need_an_initialised_home(tmp_path, capsys):
    from mammo_fl.server.cli import main

    assert main(["sites", "list", "--home", str(tmp_path / "nothing")]) == 2
    assert "mammo-server init" in capsys.readouterr().err


# --- lab mode stays on loopback, deployment needs its files ---------------------------------

def test_insecure_lab_mode_refuses_a_public_address(tmp_path, capsys):
    from mammo_fl.client.cli import main as client_main
    from mammo_fl.server.cli import main as server_main

    assert server_main(["--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "r"),
                        "--address", "0.0.0.0:8000", "--insecure"]) == 2
    assert "loopback lab only" in capsys.readouterr().err
    assert client_main(["--site", "s", "--data", str(tmp_path), "--server", "10.0.0.8:8000", "--insecure"]) == 2
    assert "loopback lab only" in capsys.readouterr().err
    assert server_main(["--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "r")]) == 2
    assert "--home HOME is required" in capsys.readouterr().err
    assert client_main(["--site", "s", "--data", str(tmp_path), "--server", "coord:8000"]) == 2
    assert "--ca" in capsys.readouterr().err


def test_missing_nginx_is_one_line_saying_how_to_install_it(tmp_path):
    from mammo_fl.server.proxy import find_nginx

    with pytest.raises(MammoError, match="apt-get install nginx") as info:
        find_nginx(search_path=str(tmp_path), fallback=tmp_path / "no-nginx")
    assert "\n" not in str(info.value)


# --- the proxy's configuration ----------------------------------------------------------------

def test_proxy_config_forwards_only_fleet_and_health_and_nginx_accepts_it(tmp_path):
    from mammo_fl.server.pki import init_pki
    from mammo_fl.server.proxy import ProxySpec, render_config

    init_pki(tmp_path / "ca.key", tmp_path / "ca.pem", tmp_path / "s.key", tmp_path / "s.pem", ["127.0.0.1"])
    spec = ProxySpec("0.0.0.0:8443", 40001, tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem",
                     tmp_path / "proxy")
    conf = render_config(spec)
    locations = [line.strip() for line in conf.splitlines() if line.strip().startswith("location")]
    assert locations == ["location /v1/fleet/ {", "location = /health {", "location / { return 404; }"]
    assert "proxy_pass https://superlink/v1/fleet/;" in conf and "proxy_ssl_verify on;" in conf
    assert "listen 0.0.0.0:8443 ssl;" in conf and "server 127.0.0.1:40001" in conf
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx not installed (.ci/run installs it)")
    (tmp_path / "proxy" / "tmp").mkdir(parents=True)
    (tmp_path / "proxy" / "nginx.conf").write_text(conf)
    w = str(tmp_path / "proxy")
    check = subprocess.run([nginx, "-e", f"{w}/error.log", "-p", w, "-c", f"{w}/nginx.conf", "-t"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


# --- what a site accepts ----------------------------------------------------------------------

def _rc(**kw):
    base = dict(server_round=1, fed_id="abc123", model_kind="whole_image", model_spec={},
                preprocessing={"height": 96, "width": 64})
    base.update(kw)
    return RoundConfig(**base)


def test_site_caps_refuse_with_fixed_codes():
    import dataclasses

    from mammo_fl.client.policy import SitePolicy, SiteRefusal, check_registered_name, check_request
    from mammo_fl.common.training.finetune_config import FineTuneConfig

    policy = SitePolicy.load(None)
    check_request(policy, _rc())
    cases = {
        "over-limit:hist-bins": _rc(hist_bins=10**6),
        "over-limit:image-size": _rc(preprocessing={"height": 4096, "width": 64}),
        "over-limit:local-epochs": _rc(finetune=FineTuneConfig(epochs=1000)),
        "over-limit:max-steps": _rc(finetune=FineTuneConfig(max_steps=10**7)),
    }
    for code, rc in cases.items():
        with pytest.raises(SiteRefusal) as info:
            check_request(policy, rc)
        assert info.value.code == code and code in P.SITE_ERRORS
    strict = dataclasses.replace(policy, max_hist_bins=50)
    with pytest.raises(SiteRefusal):
        check_request(strict, _rc(hist_bins=100))
    with pytest.raises(SiteRefusal) as info:
        check_registered_name(_rc(registered_site="site-3"), "site-1")
    assert info.value.code == "site-name-mismatch"
    check_registered_name(_rc(registered_site=""), "site-1")  # lab mode: nothing to compare


def test_fed_id_cannot_leave_the_state_folder(tmp_path):
    from mammo_fl.client.local import fedbn_path
    from mammo_fl.client.site import SiteInfo

    for bad in ("../../etc/x", "a/b", "", "x" * 65):
        with pytest.raises(ConfigError, match="fed-id"):
            RoundConfig.from_record({"server-round": 1, "fed-id": bad})
    site = SiteInfo("s", tmp_path, tmp_path / "state", {})
    with pytest.raises(ConfigError):
        fedbn_path(site, _rc(fed_id="../escape"))
    assert fedbn_path(site, _rc(fed_id="abc_123-x")).parent == tmp_path / "state" / "fedbn"


def test_site_optimizer_state_stays_in_its_state_folder(tmp_path):
    import torch

    from mammo_fl.client.local import load_local_optimizer, save_local_optimizer
    from mammo_fl.client.site import SiteInfo
    from mammo_fl.common.training.finetune_config import FineTuneConfig

    site = SiteInfo("s", tmp_path, tmp_path / "state", {})
    keep = FineTuneConfig(local_optimizer_state=True)
    state = {"names": ["w"], "adam": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []}}
    assert load_local_optimizer(site, _rc(finetune=keep)) is None  # first round: nothing yet
    save_local_optimizer(site, _rc(fed_id="old", finetune=keep), state)
    save_local_optimizer(site, _rc(finetune=keep), state)
    (path,) = (tmp_path / "state" / "optimizer").glob("*.pt")  # the older federation's state is gone
    assert path.name == "abc123.pt" and path.stat().st_mode & 0o777 == 0o600
    assert float(load_local_optimizer(site, _rc(finetune=keep))["adam"]["state"][0]["step"]) == 3.0
    assert load_local_optimizer(site, _rc()) is None  # the federation does not keep it: not used
    path.write_bytes(b"not a torch file")
    assert load_local_optimizer(site, _rc(finetune=keep)) is None  # unreadable: a fresh Adam, not a failed round


def test_site_config_rejects_unknown_keys_and_bad_hashes(tmp_path):
    from mammo_fl.client.policy import SitePolicy

    cfg = tmp_path / "site.toml"
    cfg.write_text("max-hist-bins = 200\napproved-apps = ['" + "a" * 64 + "']\n")
    policy = SitePolicy.load(cfg)
    assert policy.max_hist_bins == 200 and policy.approved("b" * 64) == {"a" * 64, "b" * 64}
    assert SitePolicy.from_node_config(policy.to_node_config()) == policy  # survives the node config
    cfg.write_text("max-hist-binz = 200\n")
    with pytest.raises(ConfigError, match="unknown site setting"):
        SitePolicy.load(cfg)
    cfg.write_text("approved-apps = ['not-a-hash']\n")
    with pytest.raises(ConfigError, match="SHA-256"):
        SitePolicy.load(cfg)


@pytest.fixture()
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 5, 9, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


def _small_site_message(kind: str, rnd: int, evaluate: bool, arrays, digest: str):
    """What the coordinator sends a site that holds nothing yet: the full model, packed."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from federation_support import PREPROCESSING, TINY_SPEC

    from mammo_fl.common.federation import wire as W

    record, meta = P.packed_to_records(W.pack_full(arrays, W.Layout.of(arrays)))
    cfg = _rc(server_round=rnd, model_spec=TINY_SPEC, preprocessing=PREPROCESSING, val_fraction=0.3,
              evaluate=evaluate, finetune=FineTuneConfig(batch_size=2, max_steps=1, augment=False)).to_record()
    content = RecordDict({P.ARRAYS: record, P.WIRE: ConfigRecord({**meta, "base": "", "target": digest}),
                          P.CONFIG: cfg})
    return Message(content, 9, kind)


def test_a_small_site_sends_no_histogram(synth_sites, tmp_path, task_identity):
    """The real ClientApp handler on a real (synthetic DICOM) site with 1-2 validation patients per
    class. In a round (train + evaluate the received model) it still trains, but sends the fixed code
    instead of a histogram; the final EVALUATE is answered with the code alone. Both are audited."""
    from flwr.app import Context, RecordDict
    from federation_support import TINY_SPEC

    from mammo_fl.client import site_work
    from mammo_fl.client.app import handle
    from mammo_fl.client.audit import read_entries
    from mammo_fl.common.federation import wire as W
    from mammo_fl.common.models import build_model
    from mammo_fl.server.validate import screen

    site_work._SESSIONS.clear()
    site_dir = synth_sites / "site-1"
    arrays = P.state_to_numpy(build_model("whole_image", TINY_SPEC).state_dict())
    digest = W.arrays_digest(arrays)
    state = tmp_path / "state"
    ctx = Context(run_id=5, node_id=9, node_config={"site": "site-1", "data-dir": str(site_dir),
                                                    "state-dir": str(state), "min-patients-per-class": 3},
                  state=RecordDict(), run_config={})
    reply = handle(_small_site_message("train", 2, True, arrays, digest), ctx, "train")
    site = dict(reply.content.config_records[P.SITE])
    assert site["status"] == P.STATUS_OK and site["eval-error"] == P.TOO_SMALL
    assert P.EVAL not in reply.content.metric_records and P.ARRAYS in reply.content.array_records
    got = screen({9: reply}, train=True, evaluate=True, expected={}, decode=lambda c: {})
    assert [r.site for r in got.train] == ["site-1"] and not got.evals
    assert got.rejected_eval[0].reason.startswith("too small to evaluate")
    assert "evaluate round 2 failed [too-small-to-evaluate]" in (state / "client.log").read_text()

    site_work._SESSIONS.clear()
    reply = handle(_small_site_message("evaluate", 3, True, arrays, digest), ctx, "evaluate")
    assert dict(reply.content.config_records[P.SITE]) == {"site": "site-1", "status": P.STATUS_ERROR,
                                                          "error": P.TOO_SMALL}
    assert not reply.content.metric_records and not reply.content.array_records
    train_entry, eval_entry = read_entries(state)
    assert train_entry["status"] == "ok" and not train_entry["sent"]["eval"]  # no histogram left the site
    assert eval_entry["kind"] == "evaluate" and eval_entry["status"] == "error"
    assert not eval_entry["sent"]["eval"] and not eval_entry["sent"]["metrics"]
    # ... and with the threshold off the same site does send its histograms.
    ctx.node_config["min-patients-per-class"] = 0
    site_work._SESSIONS.clear()
    reply = handle(_small_site_message("evaluate", 3, True, arrays, digest), ctx, "evaluate")
    assert reply.content.config_records[P.SITE]["status"] == P.STATUS_OK
    assert "hist-pos" in reply.content.metric_records[P.EVAL]


# --- the coordinator attributes replies by registered name ------------------------------------

def _reply(site: str | None, status: str = "ok", error: str = "", metrics: dict | None = None):
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    content = RecordDict()
    if site is not None:
        content[P.SITE] = ConfigRecord({"site": site, "status": status, "error": error})
    if metrics:
        content[P.EVAL] = MetricRecord(metrics)
    return Message(content, 1, "evaluate")


def _flower_error(reason: str):
    from flwr.app import Message, RecordDict
    from flwr.app.error import Error

    request = Message(RecordDict(), 1, "evaluate")
    return Message(Error(code=0, reason=reason), reply_to=request)


def test_replies_are_attributed_by_registered_name(task_identity):
    from mammo_fl.server.validate import screen

    good = {"num-examples": 4, "num-pos": 2, "hist-neg": [1, 1], "hist-pos": [0, 2], "eval-seconds": 1.0}
    sha = "ab" * 32
    replies = {
        1: _reply("site-1", metrics=good),
        2: _reply("site-1", metrics=good),  # registered as site-2, claims site-1
        3: _reply("site-3", metrics=good),  # no registered key
        4: _flower_error(f"<class 'mammo_fl.client.app_guard.AppRefused'>:<'site site-4 refused app {sha}'>"),
        5: _reply("site-5", status="error", error=P.TOO_SMALL),
    }
    names = {1: "site-1", 2: "site-2", 4: "site-4", 5: "site-5"}
    got = screen(replies, train=False, evaluate=True, names=names)
    assert [(a.node, a.site) for a in got.evals] == [(1, "site-1")]
    assert set(got.held) == {1}  # a refused reply counts for nothing, not even the model it claims to hold
    why = {r.site: r.reason for r in got.rejected_eval}
    assert "answered as 'site-1'" in why["site-2"] and "registered as 'site-2'" in why["site-2"]
    assert "no registered site" in why["node-3"]
    assert why["site-4"] == f"refused app {sha} (not on the site's approved list)"
    assert why["site-5"].startswith("too small to evaluate")
    # lab mode (no registry): declared names, as before
    got = screen({2: _reply("site-1", metrics=good)}, train=False, evaluate=True)
    assert got.evals[0].site == "site-1"


def test_an_unknown_site_error_code_is_shown_sanitised():
    assert P.site_error_text("x/../etc\n") == "[x?..?etc?] (unknown error code)"
    assert P.site_error_text("data-error").startswith("[data-error] ")


# --- site-pinned code -------------------------------------------------------------------------

def test_the_app_bundle_hash_does_not_depend_on_where_or_when_it_was_installed(tmp_path):
    from mammo_fl.common.federation.app_bundle import APP_DIR, build_app_bundle, bundle_sha256, installed_app_sha256

    copy = tmp_path / "elsewhere" / "flower_app"
    shutil.copytree(APP_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for path in copy.rglob("*"):
        path.touch()  # other modification times
    (copy / "notes.md").write_text("a stray file is not part of the bundle")
    assert bundle_sha256(build_app_bundle(copy)) == installed_app_sha256() == bundle_sha256(build_app_bundle())
    (copy / "mammo_fab" / "client_app.py").write_text("import os  # changed code\n")
    assert bundle_sha256(build_app_bundle(copy)) != installed_app_sha256()


def _task(node_config: dict, fab_hash: str):
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    message = Message(RecordDict({"config": ConfigRecord({"server-round": 4})}), 9, "train")
    context = Context(run_id=77, node_id=9, node_config=node_config, state=RecordDict(), run_config={})
    return SimpleNamespace(message=message, context=context, run=None, fab=SimpleNamespace(hash_str=fab_hash))


def test_guard_refuses_an_unapproved_bundle_and_logs_it(tmp_path, monkeypatch, task_identity):
    import os

    from mammo_fl.client.app_guard import AppRefused, check_bundle
    from mammo_fl.client.audit import APP_SHA256_ENV, read_entries
    from mammo_fl.common.federation.app_bundle import APP_DIR, build_app_bundle, installed_app_sha256

    monkeypatch.delenv(APP_SHA256_ENV, raising=False)
    state = tmp_path / "state"
    nc = {"site": "site-9", "state-dir": str(state)}
    good = build_app_bundle()
    check_bundle(good, _task(nc, installed_app_sha256()))  # the installed release's app: approved
    assert os.environ[APP_SHA256_ENV] == installed_app_sha256()

    copy = tmp_path / "flower_app"
    shutil.copytree(APP_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "mammo_fab" / "client_app.py").write_text("import os\nos.system('echo pwned')\n")
    evil = build_app_bundle(copy)
    sha = hashlib.sha256(evil).hexdigest()
    with pytest.raises(AppRefused, match=f"site site-9 refused app {sha}"):
        check_bundle(evil, _task(nc, sha))
    with pytest.raises(AppRefused):  # approved bytes, but Flower told another hash (another install dir)
        check_bundle(good, _task(nc, sha))
    with pytest.raises(AppRefused):  # the site withdrew its approval of the release's app
        check_bundle(good, _task({**nc, "approve-installed-app": False}, installed_app_sha256()))
    check_bundle(evil, _task({**nc, "approved-apps": sha}, sha))  # ... or approved this one explicitly
    entries = read_entries(state)
    assert [e["status"] for e in entries] == ["refused-app"] * 3
    assert entries[0]["app_sha256"] == sha and entries[0]["round"] == 4 and entries[0]["run_id"] == 77
    assert f"refused app bundle {sha}" in (state / "client.log").read_text()


def test_guard_script_is_a_working_flwr_clientapp(tmp_path):
    from mammo_fl.client.app_guard import write_guard

    guard = write_guard(tmp_path / "bin")
    assert guard.name == "flwr-clientapp" and _mode(guard) & 0o100
    out = subprocess.run([str(guard), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--runtime-api-address" in out.stdout
    # A "forkserver"/"spawn" worker (the preprocessing pool) re-imports the main script: it must not
    # start another flwr-clientapp there (that would parse the worker's argv and exit).
    import runpy

    runpy.run_path(str(guard), run_name="__mp_main__")


# --- one-line refusals on both sides ----------------------------------------------------------

def test_coordinator_names_the_key_flower_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization

    from mammo_fl.client.keys import generate_site_keys
    from mammo_fl.common.federation.site_keys import fingerprint, load_public_key
    from mammo_fl.server.key_refusals import KeyRefusals

    _, pub = generate_site_keys("stranger", tmp_path)
    key = load_public_key(pub)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    log = tmp_path / "superlink.log"
    log.write_text("old line\n")
    watch = KeyRefusals(log)
    line = (f"ERROR :     [/v1/fleet/activate-node][ApiError:2004] Attempted to register SuperNode with public "
            f"key: {pem!r}, exception: No SuperNode found with the given public key.\n")
    with open(log, "a") as fh:
        fh.write(line + line)
    (out,) = watch.poll()
    assert fingerprint(key) in out and "not registered" in out
    assert watch.poll() == []  # once per key


def test_site_names_why_its_supernode_stopped(tmp_path):
    from mammo_fl.client.site_console import RefusalLines, supernode_exit_reason

    log = tmp_path / "supernode.log"
    log.write_text("Exit Code: 305\nFailed to initialize the connection to the SuperLink.\n"
                   "[code: 2004] Failed to activate SuperNode.\n")
    assert "refused this site's key" in supernode_exit_reason(log, 0, "site-1")
    assert supernode_exit_reason(log, log.stat().st_size, "site-1") is None
    client_log = tmp_path / "client.log"
    lines = RefusalLines(client_log)
    lines.poll()
    client_log.write_text("2026-01-01T00:00:00Z train round 2 failed [site-name-mismatch]: registered as 'a'\n"
                          "Traceback (most recent call last):\n")
    assert lines.poll() == ["train round 2 failed [site-name-mismatch]: registered as 'a'"]


def test_health_probe_verifies_the_coordinator_certificate(tmp_path):
    from mammo_fl.common.federation.processes import TlsRefused, free_port, probe_health
    from mammo_fl.server.pki import init_pki

    init_pki(tmp_path / "ca.key", tmp_path / "ca.pem", tmp_path / "s.key", tmp_path / "s.pem", ["127.0.0.1"])
    init_pki(tmp_path / "o.key", tmp_path / "other-ca.pem", tmp_path / "o2.key", tmp_path / "o.pem", ["127.0.0.1"])

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Health)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert probe_health(f"127.0.0.1:{port}", insecure=False, ca=tmp_path / "ca.pem") is None
        with pytest.raises(TlsRefused, match="does not verify"):
            probe_health(f"127.0.0.1:{port}", insecure=False, ca=tmp_path / "other-ca.pem")
        assert probe_health(f"127.0.0.1:{port}", insecure=True) is not None  # plain HTTP to a TLS port fails
    finally:
        server.shutdown()
