"""What a Ray Train trial that Tune stopped leaves behind in Ray: its placement group and PlacementGroupCleaner."""

from __future__ import annotations

import contextlib
import os
import signal
import time


def remove_placement_groups(ids: list[str]) -> None:
    """Remove these placement groups (hex ids) unless already gone; never raises (Ray may be shutting down)."""
    from ray._raylet import PlacementGroupID
    from ray.util import placement_group_table
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    for pg_id in ids:
        try:
            pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id)))
            if placement_group_table(pg).get("state") not in (None, "REMOVED"):
                remove_placement_group(pg)
        except Exception:  # already gone, or Ray is shutting down
            pass


def end_orphaned_cleaners() -> int:
    """End Ray Train PlacementGroupCleaner actors whose Ray Train controller is gone; returns how many.

    Every TorchTrainer run starts one, detached, to remove the run's placement group should its controller die.
    It learns that through the dashboard's state API, which a Ray without the dashboard (our local one) does
    not serve: it then polls forever and never exits (~200 MB each). A controller that ends gracefully stops
    its cleaner; one Tune ended with its trial's process does not. The GCS's own actor table (no dashboard
    needed) says which controllers are gone: a cleaner's owner is its controller's worker. The placement group
    itself is removed by remove_placement_groups (the trial reported it).
    """
    import ray
    from ray._private import state

    actors = list(state.actors().values())
    alive = {_address(a["Address"]) for a in actors if a["State"] == "ALIVE"}
    here = ray.get_runtime_context().get_node_id()
    orphans = [
        a
        for a in actors
        if a["ActorClassName"] == "PlacementGroupCleaner"
        and a["State"] == "ALIVE"
        and _address(a["OwnerAddress"]) not in alive
        and a["Address"]["NodeID"] == here  # Ray Train puts it on the head node, where a sweep's driver runs
    ]
    for actor in orphans:
        # ray.kill needs a handle, which only its creator had; its process is on this node
        with contextlib.suppress(ProcessLookupError):
            os.kill(actor["Pid"], signal.SIGKILL)
    return len(orphans)


def _address(address: dict) -> tuple[str, int]:
    return address["IPAddress"], address["Port"]


def end_cleaners_at_exit(wait_s: float = 30.0) -> None:
    """At the sweep's end: end the cleaners of its last Ray Train trials, whose controllers end asynchronously."""
    from ray._private import state

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        end_orphaned_cleaners()
        live = [a for a in state.actors().values() if a["State"] == "ALIVE"]
        if not any(a["ActorClassName"] in ("PlacementGroupCleaner", "TrainController") for a in live):
            return
        time.sleep(0.5)
