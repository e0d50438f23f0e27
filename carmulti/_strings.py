"""Every contract string of carmulti, in one place: the patterns' texts and the agent-run errors.

The ones marked [V] are verbatim from the Rust crate (car-multi 0.26
``patterns/swarm.rs`` and ``patterns/delegator.rs``); the others are this
port's choices where the Rust text was not visible (spec section 8).
"""

# -- swarm [V] -----------------------------------------------------------------
NO_ANSWER = "[no agent produced an answer]"
PRIOR_FINDINGS = "{task}\n\nPrior agents' findings:\n{lines}"
FINDING_LINE = "- {name}: {answer}"
SECTION = "## {name}\n{answer}"
SYNTH_TASK = "Original task: {task}\n\nAgent outputs:\n{lines}\n\nSynthesize these into a single coherent answer."
CRITIQUE_NAME = "{name}_critique"
CRITIQUE_PROMPT = (
    "{system_prompt}\n\nOriginal task: {task}\n\nOther agents' answers:\n{others}\n\n"
    "Critique these answers and provide your improved response."
)
SEQUENTIAL_TRUNCATE = 300
DEBATE_TRUNCATE = 300
SYNTH_TRUNCATE = 500
WORKSPACE_FAILED = "workspace provisioning failed: {err}"
JOIN_ERROR = "join error: {details}"
MISSING_RESULT = "internal: missing join result"
STATE_KEY = "agent.{name}.answer"
STATE_WRITER = "swarm.{name}"

# -- delegator [V] ---------------------------------------------------------------
DELEGATE_TOOL = "delegate"
UNKNOWN_TOOL = "unknown tool: {tool}"
NEED_SPECIALIST = "delegate requires 'specialist' parameter"
NEED_SUBTASK = "delegate requires 'subtask' parameter"
UNKNOWN_SPECIALIST = "Unknown specialist '{name}'. Available: {available}"
SPECIALIST_FAILED = "specialist '{name}' failed: {err}"

# -- supervisor (port's choice; spec 4.3 recommendations) -----------------------
APPROVAL_TOKEN = "APPROVED"
SUPERVISOR_FEEDBACK = "{task}\n\nSupervisor feedback:\n{feedback}"
SUPERVISOR_REVIEW = (
    "{task}\n\nWorker outputs:\n{lines}\n\n"
    "Review the work. Reply APPROVED if it is acceptable; otherwise give feedback for the next round."
)

# -- map-reduce (port's choice; spec 4.6 recommendations) ------------------------
MAPPER_NAME = "{name}_{i}"
MAPPER_TASK = "{task}\n\nItem:\n{item}"
REDUCER_TASK = "{task}\n\nMapper outputs:\n{lines}"

# -- vote (port's choice; spec 4.7 recommendations) -----------------------------
VOTE_SYNTH_TASK = (
    "Original task: {task}\n\nCandidate answers:\n{lines}\n\n"
    "No answer has a majority. Reply with the single best answer."
)

# -- agent runs (every executor; the API contract, "Infrastructure") -------------
TIMEOUT = "timeout after {timeout}s"
RUNNER_CANCELLED = JOIN_ERROR.format(details="CancelledError raised by the runner")
INVALID_OUTPUT = "invalid output from runner: {problem}"
