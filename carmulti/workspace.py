"""Per-agent filesystem workspaces (car-multi ``workspace``).

A parallel swarm with workspaces gives every agent its own directory
(``<base>/<agent_name>-<uuid hex>``), advertised to the runner under
``AgentSpec.metadata["workspace"]`` and removed when the agent ends. The runtime
only provisions, advertises and cleans up: the runner must run its file tools
there (cooperative isolation).

Modes: ``DIRECTORY`` (an empty directory) or ``GIT_WORKTREE`` (a detached git
worktree of ``repo`` at ``rev``, default ``HEAD``; needs ``git`` on PATH).
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .errors import WorkspaceError
from .types import AgentSpec

__all__ = ["WORKSPACE_METADATA_KEY", "AgentWorkspace", "WorkspaceConfig", "WorkspaceError", "WorkspaceMode"]

#: ``AgentSpec.metadata`` key under which the workspace path is advertised.
WORKSPACE_METADATA_KEY = "workspace"


class WorkspaceMode(str, enum.Enum):
    DIRECTORY = "directory"
    GIT_WORKTREE = "git_worktree"


@dataclass(frozen=True)
class WorkspaceConfig:
    """Where and how to provision workspaces.

    Attributes:
        base: Parent directory of the workspaces (created if missing).
        mode: :class:`WorkspaceMode`.
        repo: Git repository for worktrees; ``None`` = the repository containing ``base``.
        rev: Revision checked out in worktrees; ``None`` = ``HEAD``.

    Usage::

        WorkspaceConfig.directory("/tmp/ws")                      # empty dir per agent
        WorkspaceConfig.git_worktree("/tmp/ws", repo="/src/app")   # worktree of app at HEAD
        WorkspaceConfig.git_worktree("/tmp/ws", repo=".", rev="v1.2")
    """

    base: Path
    mode: WorkspaceMode = WorkspaceMode.DIRECTORY
    repo: Path | None = None
    rev: str | None = None

    @classmethod
    def directory(cls, base: str | os.PathLike[str]) -> "WorkspaceConfig":
        return cls(Path(base), WorkspaceMode.DIRECTORY)

    @classmethod
    def git_worktree(cls, base: str | os.PathLike[str], repo: str | os.PathLike[str] | None = None,
                     rev: str | None = None) -> "WorkspaceConfig":
        return cls(Path(base), WorkspaceMode.GIT_WORKTREE, None if repo is None else Path(repo), rev)


def _git(args: list[str], cwd: Path) -> str:
    if shutil.which("git") is None:
        raise WorkspaceError("git worktree workspaces need `git` on PATH; install git or use WorkspaceConfig.directory()")
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WorkspaceError(f"`git {' '.join(args)}` in {cwd} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


class AgentWorkspace:
    """One agent's provisioned workspace; a context manager that removes it on exit."""

    __slots__ = ("config", "agent_name", "path", "_repo", "_closed")

    def __init__(self, config: WorkspaceConfig, agent_name: str, path: Path, repo: Path | None) -> None:
        self.config = config
        self.agent_name = agent_name
        self.path = path
        self._repo = repo
        self._closed = False

    @classmethod
    def provision(cls, config: WorkspaceConfig, agent_name: str) -> "AgentWorkspace":
        """Create ``<base>/<agent_name>-<uuid hex>`` (a directory or a git worktree).

        Raises:
            WorkspaceError: the directory or worktree could not be created (the
                message carries the OS or git error).
        """
        base = Path(config.base)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in agent_name) or "agent"
        path = base / f"{safe}-{uuid.uuid4().hex}"
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceError(f"cannot create workspace base {base}: {exc}") from exc
        if config.mode is WorkspaceMode.DIRECTORY:
            try:
                path.mkdir()
            except OSError as exc:
                raise WorkspaceError(f"cannot create workspace {path}: {exc}") from exc
            return cls(config, agent_name, path, None)
        repo = Path(config.repo) if config.repo is not None else Path(_git(["rev-parse", "--show-toplevel"], base))
        _git(["worktree", "add", "--detach", str(path), config.rev or "HEAD"], repo)
        return cls(config, agent_name, path, repo)

    def inject(self, spec: AgentSpec) -> AgentSpec:
        """Return ``spec`` with ``metadata["workspace"]`` set to this path."""
        return spec.with_metadata(WORKSPACE_METADATA_KEY, str(self.path))

    def close(self) -> None:
        """Remove the directory / worktree. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        if self._repo is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(self.path)], cwd=self._repo,
                           capture_output=True)
            subprocess.run(["git", "worktree", "prune"], cwd=self._repo, capture_output=True)
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "AgentWorkspace":
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<AgentWorkspace {self.agent_name!r} at {self.path}>"
