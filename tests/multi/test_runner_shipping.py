"""Shipping runners to worker processes: carmulti and carcore travel by reference.

Issue 8, finding 8: under the README's editable install (``pip install -e``) the package's files
are not under site-packages, so dill pickled the ``carmulti`` module *by value* whenever a
runner's code named it (``carmulti.AgentOutput(...)`` in a ``__main__`` runner) and failed on a
``ContextVar``; every agent failed with ``could not send agent ... to a worker``.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import dill
import pytest

import carcore
import carmulti
from carmulti.executors.process.shipping import dumps

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json

    import carmulti
    from carmulti import Action, ActionProposal, AgentSpec, ProcessExecutor, SharedInfra, Swarm


    def no_secrets(action, state):  # a __main__ policy naming the carmulti module
        if action.action_type is carmulti.ActionType.STATE_WRITE and action.parameters["key"] == "secret":
            return "secrets stay out of the shared state"
        return None


    class MainRunner:  # defined in __main__: shipped by value, with the globals it names
        async def run(self, spec, task, runtime, mailbox):
            res = await runtime.execute(ActionProposal("p", spec.name, [Action.state_write("w", "secret", 1)]))
            return carmulti.AgentOutput(spec.name, f"{spec.name} did {task}: {res.results[0].status.value}",
                                        turns=1)


    async def main():
        async with SharedInfra(executor=ProcessExecutor(workers=1)) as infra:
            infra.policies.register("no_secrets", no_secrets)
            res = await Swarm([AgentSpec("a"), AgentSpec("b")]).run("t", MainRunner(), infra)
            print(json.dumps([[o.answer, o.error] for o in res.outputs]))


    if __name__ == "__main__":
        carmulti.run(main())
''')


def test_main_script_runner_naming_the_carmulti_module_ships_to_a_worker(tmp_path: Path) -> None:
    script = tmp_path / "agents_main.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "-W", "error", str(script)], cwd=REPO, capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == '[["a did t: rejected", null], ["b did t: rejected", null]]', proc.stderr


def _uses_modules() -> object:
    return (carmulti.AgentOutput, carcore.StateStore, carmulti.executors.process.ProcessExecutor)


@pytest.mark.parametrize("mod", [carmulti, carcore, carmulti.executors.process, carcore.errors])
def test_carmulti_and_carcore_modules_pickle_by_reference(mod: object) -> None:
    blob = dumps(mod)
    assert dill.loads(blob) is mod
    assert len(blob) < 200  # a reference (the module name), not the module's namespace


def test_a_function_naming_the_modules_round_trips() -> None:
    fn = dill.loads(dumps(_uses_modules))
    assert fn() == _uses_modules()
    assert importlib.import_module("carmulti") is carmulti
