"""`broker scopes diff` over folders, files and git revisions: exit 0 narrows or same, 1 widens, 2 unusable."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from broker.cli.main import main
from tests.conftest import REPO_SCOPES


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    shutil.copytree(REPO_SCOPES, tmp_path / "scopes")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "scopes")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.test", "commit", "-qm", "templates")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_widening_edit_against_the_last_commit(repo, capsys):
    path = repo / "scopes" / "ecs-update-service-prod.yaml"
    path.write_text(path.read_text().replace("approvals: 2", "approvals: 1").replace(
        '"ecs:DescribeServices"]', '"ecs:DescribeServices", "ecs:DeleteService"]'))
    assert main(["scopes", "diff", "HEAD:scopes", "scopes", "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    (change,) = [t for t in report["templates"] if t["status"] != "unchanged"]
    assert change["template"] == "ecs-update-service-prod" and change["widens"]
    assert "destructive" in change["risks_gained"] and "approvals: 2 -> 1" in change["changes"]
    assert any("ecs:DeleteService" in g for g in change["grants_added"])
    assert main(["scopes", "diff", "HEAD:scopes/ecs-update-service-prod.yaml", str(path)]) == 1
    assert main(["scopes", "diff", str(path), "HEAD:scopes/ecs-update-service-prod.yaml"]) == 0


def test_same_and_narrower_are_exit_0(repo, capsys):
    assert main(["scopes", "diff", "HEAD:scopes", "scopes"]) == 0
    assert "no template changed" in capsys.readouterr().out
    path = repo / "scopes" / "s3-read-prefix.yaml"
    path.write_text(path.read_text().replace("ttl: {default: 900, max: 3600}", "ttl: {default: 900, max: 1800}"))
    assert main(["scopes", "diff", "HEAD:scopes", "scopes"]) == 0
    assert "ttl max: 3600 -> 1800" in capsys.readouterr().out


@pytest.mark.parametrize("old", ["nowhere", "HEAD~5:scopes", "HEAD:missing", ":scopes"])
def test_unusable_input_is_exit_2(repo, old):
    assert main(["scopes", "diff", old, "scopes"]) == 2


def test_a_broken_template_is_unusable(repo):
    (repo / "scopes" / "broken.yaml").write_text("name: [")
    assert main(["scopes", "diff", "HEAD:scopes", "scopes"]) == 2


@pytest.mark.parametrize(("old", "git_says"), [
    ("HEAD~5:scopes", "invalid object name"), ("HEAD:missing", "does not exist in 'HEAD'")])
def test_an_unreadable_revision_says_why_in_gits_words(repo, capsys, old, git_says):
    assert main(["scopes", "diff", old, "scopes"]) == 2
    err = capsys.readouterr().err
    assert "[template_unreadable]" in err and "nor a git revision with a path" in err and git_says in err


def test_outside_a_repository_a_revision_is_named_as_such(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO_SCOPES, tmp_path / "scopes")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert main(["scopes", "diff", "HEAD~1:scopes", "scopes"]) == 2
    assert "not a git repository" in capsys.readouterr().err
