"""The public surface: ``carmulti.__all__``."""

from __future__ import annotations

import inspect

import carcore
import carmulti

API_NAMES = {
    "AgentSpec", "AgentOutput", "TokenAccounting", "Message", "AgentRunner", "MultiError", "AgentFailed",
    "MailboxSend", "MailboxTimeout", "UnknownSpecialist", "NoOutput", "MaxRoundsExceeded", "BudgetExhausted",
    "AdvisorExhausted", "SharedInfra", "BudgetLimits", "CoordinationBudget", "BudgetError", "budget_skipped_output",
    "is_budget_skipped", "AgentContext", "TaskScope", "WorkspaceConfig", "AgentWorkspace", "WORKSPACE_METADATA_KEY",
    "Mailbox", "Action", "ActionProposal", "ActionType", "ToolExecutor", "ToolError", "Runtime", "PolicyEngine",
    "Swarm", "SwarmMode", "SwarmResult", "Pipeline", "PipelineResult", "Supervisor", "SupervisorResult", "Delegator",
    "DelegatorResult", "DelegationRecord", "MapReduce", "MapReduceResult", "Vote", "VoteResult", "AgentPool",
    "MessageRouter", "AgentMessage", "PoolAtCapacity", "run", "Tournament", "TournamentResult", "MatchResult", "Fleet",
    "FleetResult", "AdversarialReview", "AdversarialReviewResult", "ReviewFinding", "Advisor", "AdvisorResult",
    "AdvisorVerdict", "SpawnSubtask", "SpawnSubtaskResult", "SubtaskRecord", "SPAWN_SUBTASK_TOOL",
}


#: The whole curated surface of the root, written out (httpx style): what users write -- patterns,
#: types, SharedInfra, executors, budgets, errors, runtime actions, mailboxes. Executor authors'
#: names (AgentJob, AgentRun, Coordination, Executor, run_agent) live in carmulti.executors.
ROOT_NAMES = [
    "Action", "ActionProposal", "ActionResult", "ActionStatus", "ActionType", "AdversarialReview",
    "AdversarialReviewResult", "Advisor", "AdvisorExhausted", "AdvisorResult", "AdvisorVerdict", "AgentContext",
    "AgentFailed", "AgentId", "AgentMessage", "AgentOutput", "AgentPool", "AgentRunner", "AgentSpec",
    "AgentWorkspace", "BudgetError", "BudgetExhausted", "BudgetLimits", "BudgetSnapshot", "CarError",
    "CoordinationBudget", "DEFAULT_SUBAGENT_PROMPT", "DELEGATE_SCHEMA", "DelegationRecord", "Delegator",
    "DelegatorResult", "FailureBehavior", "Fleet", "FleetResult", "IDEMPOTENT_METADATA_KEY", "Inbox",
    "LocalExecutor", "LogCorruptedError", "Mailbox", "MailboxFull", "MailboxSend", "MailboxTimeout", "MapReduce",
    "MapReduceResult", "MatchResult", "MaxRoundsExceeded", "MergeConflictError", "Message", "MessageRouter",
    "MultiError", "NoOutput", "Pipeline", "PipelineResult", "PolicyEngine", "PolicyViolation", "PoolAtCapacity",
    "PooledMailbox", "Precondition", "ProcessExecutor", "ProposalResult", "RayExecutor", "ReplayDivergence",
    "ReviewFinding", "Runtime",
    "SPAWN_SUBTASK_TOOL", "SharedInfra", "SpawnSubtask", "SpawnSubtaskResult", "SubtaskRecord", "Supervisor",
    "SupervisorResult", "Swarm", "SwarmMode", "SwarmResult", "TaskScope", "TokenAccounting", "ToolError",
    "ToolExecutor", "Tournament", "TournamentResult", "UnknownSpecialist", "Vote", "VoteResult",
    "WORKSPACE_METADATA_KEY", "WireProtocolError", "WorkerPoolGaveUp", "WorkspaceConfig", "WorkspaceError",
    "WorkspaceMode", "budget_skipped_output", "is_budget_skipped", "normalize_vote", "run", "truncate",
]


EXECUTOR_NAMES = ["IDEMPOTENT_METADATA_KEY", "AgentEnvironment", "AgentJob", "AgentRun", "Coordination", "Executor",
                  "LocalExecutor", "ProcessExecutor", "RayExecutor", "run_agent"]


def test_root_exports_exactly_the_written_list():
    assert carmulti.__all__ == ROOT_NAMES


def test_executor_interface_lives_in_carmulti_executors():
    import carmulti.executors

    assert carmulti.executors.__all__ == EXECUTOR_NAMES
    for name in ("AgentJob", "AgentRun", "Coordination", "Executor", "run_agent"):
        assert name not in carmulti.__all__


def test_moved_names_still_import_with_a_deprecation_warning():
    import warnings

    import carmulti.executors
    import carmulti.patterns

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert carmulti.SupervisorGaveUp is carmulti.WorkerPoolGaveUp
        assert carmulti.AgentJob is carmulti.executors.AgentJob
        assert carmulti.DelegatingExecutor is carmulti.patterns.DelegateTool
    assert [w.category for w in caught] == [DeprecationWarning] * 3
    assert "use carmulti.errors.WorkerPoolGaveUp" in str(caught[0].message)


def test_all_is_sorted_and_unique():
    names = list(carmulti.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_every_name_resolves():
    for name in carmulti.__all__:
        assert hasattr(carmulti, name), name
        assert getattr(carmulti, name) is not None, name


def test_api_names_are_exported():
    missing = API_NAMES - set(carmulti.__all__)
    assert not missing, f"API.md names missing from carmulti.__all__: {sorted(missing)}"


def test_public_objects_report_package_module():
    wrong = []
    for name in carmulti.__all__:
        obj = getattr(carmulti, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        mod = getattr(obj, "__module__", "")
        if not mod.startswith("carmulti"):  # aliases of builtins, re-exports from the compiled core
            continue
        if mod != "carmulti":
            wrong.append(f"{name}: {mod}")
    assert not wrong, wrong


def test_every_exception_class_derives_from_car_error():
    excs = [getattr(carmulti, n) for n in carmulti.__all__
            if inspect.isclass(getattr(carmulti, n)) and issubclass(getattr(carmulti, n), BaseException)]
    assert len(excs) >= 10
    for exc in excs:
        assert issubclass(exc, carcore.CarError), exc
    assert carmulti.CarError is carcore.CarError
    assert issubclass(carmulti.MultiError, Exception)


def test_workspace_metadata_key_value():
    assert carmulti.WORKSPACE_METADATA_KEY == "workspace"


def test_runner_protocol_is_runtime_checkable():
    from .doubles import MockRunner

    assert isinstance(MockRunner(), carmulti.AgentRunner)
    assert not isinstance(object(), carmulti.AgentRunner)
