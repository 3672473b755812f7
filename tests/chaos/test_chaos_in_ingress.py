"""Nothing lost when the ingress dies with the orchestrator's answer path in its own process
(`server.orchestrator_in_ingress`): the answers in flight die with it, and each client's resume, served by the
replacement replica, takes its answer over from the journal. A stack of its own, as tests/chaos/test_chaos.py."""

import asyncio
import time

import pytest

from benchmarks.chaos import chaos_stack, run_role, wait_answering

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    overrides = {"server": {"orchestrator_in_ingress": True}, "routing": {"request_deadline_s": 180.0}}
    with chaos_stack(tmp_path_factory.mktemp("chaos-in-ingress"), overrides) as started:
        yield started


def test_answers_run_in_the_ingress_survive_its_death(chaos):
    stack, base = chaos
    assert wait_answering(base, stack.key, time.monotonic(), limit_s=300) is not None, "never answered"
    row = asyncio.run(run_role(stack, base, "ingress", streams=3, max_tokens=40))
    print(row)
    assert row["completed"] == row["streams"], row  # each resumed from its last event id, and finished
    assert row["stored_once_equal"] == row["streams"], row  # what each client read is the stored turn, once
    assert row["recovered_s"] is not None and row["recovered_s"] < 60, row


def test_answers_do_not_go_through_the_orchestrator_deployment(chaos):
    """Killing the Orchestrator deployment's replica (left with batch work) breaks no stream: none resumes."""
    stack, base = chaos
    assert wait_answering(base, stack.key, time.monotonic(), limit_s=300) is not None, "never answered again"
    row = asyncio.run(run_role(stack, base, "orchestrator", streams=3, max_tokens=40))
    print(row)
    assert row["completed"] == row["stored_once_equal"] == row["streams"], row
    assert row["resumes"] == 0 and not row["errors"], row
