"""The scheduler's rules on a virtual clock (bench/fleet_sim.py): the fleet benchmark's burst, with the
real SchedulerState and plan deciding and simulated slots obeying instantly. It is the bound the real
fleet benchmark is compared with, and it checks the balancing rule does what it is for."""

from __future__ import annotations

import dataclasses

from bench import fleet_sim as sim

JOBS = sim.burst(300, 0.2, 20240611)  # the fleet benchmark's burst, same seed


def test_lanes_alone_leave_a_tail_that_balancing_removes() -> None:
    lanes_only = sim.simulate(JOBS, dataclasses.replace(sim.SimConfig(), balance_gain=None))
    balanced = sim.simulate(JOBS, sim.SimConfig())
    assert lanes_only["jobs"] == balanced["jobs"] == 300
    # Interactive first meets the wait target but 60 long jobs on 8 slots end in a half round.
    assert lanes_only["utilisation"] < 0.95 and lanes_only["preemptions"] == 0
    # Handing a few long jobs back at checkpoints meets both burst targets at once.
    assert balanced["utilisation"] >= 0.98, balanced
    assert balanced["interactive_p95"] <= 10.0, balanced
    assert 0 < balanced["preemptions"] <= 2 * 8
    assert balanced["interactive_p95"] == lanes_only["interactive_p95"]  # interactive work untouched


def test_no_preemption_without_a_tail() -> None:
    even = sim.burst(16, 1.0, 1)  # 16 long jobs on 8 slots: two full rounds, nothing to balance
    result = sim.simulate(even, sim.SimConfig())
    assert result["preemptions"] == 0 and result["utilisation"] > 0.99


def test_fair_share_keeps_a_quiet_tenants_waits_to_one_job_under_a_noisy_neighbour() -> None:
    """A tenant with 6 jobs among another's 48 (all long, batch): with fair share each of its jobs starts
    at the next free slot; in one queue it waits behind the whole backlog."""
    jobs = sim.noisy_neighbour(48, 6, 8.0)
    table = sim.neighbour_table(jobs, sim.SimConfig(slots=8, scale=50.0, checkpoint_every=8))
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")
        for line in table.splitlines()[2:]
    }
    long_job = 64 * 7.76 / 50
    fair_quiet_p95 = float(rows[("fair share", "quiet")][5])
    one_queue_quiet_p95 = float(rows[("one queue", "quiet")][5])
    assert fair_quiet_p95 <= long_job + 0.5, table
    assert one_queue_quiet_p95 > 3 * long_job, table
    assert (
        rows[("fair share", "noisy")][3].strip() == "48" and rows[("fair share", "quiet")][3].strip() == "6"
    )
