"""The fault script happens at the same fractions of any run, each step exactly once, faults cleared at the end."""

from __future__ import annotations

from meshlet.demo.script import HEALTHY, SCRIPT, STEADY, Schedule


def test_each_step_comes_once_at_its_fraction_of_the_run() -> None:
    schedule = Schedule(SCRIPT, duration_s=10.0)

    assert schedule.due(0.9) == []
    first = schedule.due(1.0)
    assert [step.target for step in first] == ["inventory-1"]
    assert schedule.due(1.1) == []
    rest = schedule.due(10.0)
    assert len(first) + len(rest) == len(SCRIPT)
    assert schedule.due(100.0) == []


def test_a_late_tick_gets_every_step_it_missed_in_order() -> None:
    schedule = Schedule(SCRIPT, duration_s=30.0)

    assert [step.at for step in schedule.due(30.0)] == sorted(step.at for step in SCRIPT)


def test_the_phase_is_what_the_last_step_said() -> None:
    schedule = Schedule(SCRIPT, duration_s=10.0)

    assert schedule.phase(0.0) == STEADY
    assert schedule.phase(2.6) == SCRIPT[1].says


def test_the_script_kills_and_restarts_one_instance_and_leaves_no_fault_behind() -> None:
    actions = [(step.action, step.target) for step in SCRIPT]
    assert ("kill", "inventory-2") in actions
    assert actions.index(("kill", "inventory-2")) < actions.index(("restart", "inventory-2"))
    last_faults = {step.target: step.faults for step in SCRIPT if step.action == "faults"}
    assert all(faults == HEALTHY for faults in last_faults.values())
    assert max(step.at for step in SCRIPT) < 1.0


def test_no_faults_means_an_empty_schedule() -> None:
    schedule = Schedule((), duration_s=10.0)

    assert schedule.due(10.0) == []
    assert schedule.phase(5.0) == STEADY
