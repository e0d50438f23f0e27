"""Filesystem workspaces: plain directories and git worktrees, provisioning and cleanup."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from carmulti import (
    WORKSPACE_METADATA_KEY,
    AgentOutput,
    AgentSpec,
    AgentWorkspace,
    MultiError,
    Swarm,
    WorkspaceConfig,
    WorkspaceError,
    WorkspaceMode,
)


@pytest.fixture
def git_env(monkeypatch, tmp_path):
    for k, v in {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "Test",
                 "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1",
                 "HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "home").mkdir()


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(git_env, tmp_path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    (r / "README.md").write_text("v1\n")
    git(r, "add", "README.md")
    git(r, "commit", "-q", "-m", "first")
    return r


def test_metadata_key():
    assert WORKSPACE_METADATA_KEY == "workspace"


def test_directory_provision_inject_and_cleanup(tmp_path):
    base = tmp_path / "missing" / "base"  # created if missing
    cfg = WorkspaceConfig.directory(base)
    assert cfg.mode is WorkspaceMode.DIRECTORY and cfg.base == base
    with AgentWorkspace.provision(cfg, "alice") as ws:
        assert ws.path.is_dir() and ws.path.parent == base
        assert re.fullmatch(r"alice-[0-9a-f]{32}", ws.path.name)
        assert list(ws.path.iterdir()) == []
        s = ws.inject(AgentSpec("alice", metadata={"model": "m"}))
        assert s.metadata == {"model": "m", "workspace": str(ws.path)}
        path = ws.path
    assert not path.exists()


def test_same_name_gets_distinct_directories(tmp_path):
    cfg = WorkspaceConfig.directory(tmp_path)
    a = AgentWorkspace.provision(cfg, "same")
    b = AgentWorkspace.provision(cfg, "same")
    try:
        assert a.path != b.path and a.path.is_dir() and b.path.is_dir()
    finally:
        a.close()
        b.close()
        a.close()  # idempotent
    assert not a.path.exists() and not b.path.exists()


def test_provisioning_failure_raises_workspace_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(WorkspaceError) as ei:
        AgentWorkspace.provision(WorkspaceConfig.directory(f), "a")
    assert isinstance(ei.value, MultiError)
    assert str(f) in str(ei.value)


def test_git_worktree_at_head_and_cleanup(repo, tmp_path):
    base = tmp_path / "wt"
    cfg = WorkspaceConfig.git_worktree(base, repo=repo)
    assert cfg.mode is WorkspaceMode.GIT_WORKTREE and cfg.repo == repo and cfg.rev is None
    ws = AgentWorkspace.provision(cfg, "bob")
    try:
        assert ws.path.parent == base
        assert (ws.path / "README.md").read_text() == "v1\n"
        assert str(ws.path) in git(repo, "worktree", "list")
        assert git(ws.path, "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")
    finally:
        ws.close()
    assert not ws.path.exists()
    assert str(ws.path) not in git(repo, "worktree", "list")


def test_git_worktree_at_rev(repo, tmp_path):
    first = git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("v2\n")
    git(repo, "commit", "-q", "-am", "second")
    with AgentWorkspace.provision(WorkspaceConfig.git_worktree(tmp_path / "wt", repo=repo, rev=first), "c") as ws:
        assert (ws.path / "README.md").read_text() == "v1\n"
    with AgentWorkspace.provision(WorkspaceConfig.git_worktree(tmp_path / "wt", repo=repo), "c") as ws:
        assert (ws.path / "README.md").read_text() == "v2\n"


def test_git_worktree_repo_derived_from_base(repo):
    base = repo / ".worktrees"
    with AgentWorkspace.provision(WorkspaceConfig.git_worktree(base), "d") as ws:
        assert (ws.path / "README.md").exists()
        path = ws.path
    assert not path.exists()
    assert str(path) not in git(repo, "worktree", "list")


def test_git_worktree_outside_a_repo_fails(git_env, tmp_path):
    lonely = tmp_path / "not-a-repo"
    lonely.mkdir()
    with pytest.raises(WorkspaceError):
        AgentWorkspace.provision(WorkspaceConfig.git_worktree(lonely), "e")


def test_git_worktree_bad_rev_fails(repo, tmp_path):
    with pytest.raises(WorkspaceError, match="no-such-rev"):
        AgentWorkspace.provision(WorkspaceConfig.git_worktree(tmp_path / "wt", repo=repo, rev="no-such-rev"), "f")


class ReadmeRunner:
    """Answers with the README of its workspace."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> AgentOutput:
        path = Path(spec.metadata["workspace"])
        (path / "scratch.txt").write_text(spec.name)
        return AgentOutput(name=spec.name, answer=(path / "README.md").read_text() + "@" + str(path), turns=1)


async def test_swarm_with_git_worktrees(make_infra, repo, tmp_path):
    infra = make_infra()
    cfg = WorkspaceConfig.git_worktree(tmp_path / "wt", repo=repo)
    result = await Swarm([AgentSpec("a"), AgentSpec("b")]).with_workspaces(cfg).run("T", ReadmeRunner(), infra)
    assert all(o.succeeded for o in result.outputs), [o.error for o in result.outputs]
    contents = [o.answer.split("@")[0] for o in result.outputs]
    paths = [o.answer.split("@")[1] for o in result.outputs]
    assert contents == ["v1\n", "v1\n"]
    assert paths[0] != paths[1]
    for p in paths:
        assert not Path(p).exists()
    assert git(repo, "worktree", "list").count("\n") == 0  # only the main worktree remains
    assert not (repo / "scratch.txt").exists()
