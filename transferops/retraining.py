"""When a triggered retrain may go ahead: the guards, as a pure function.

A drift event can arrive many times for one shift (every scheduled monitor run sees it
until a new champion is in place), and a redeploy recreates Prefect's automations, which
can reset a trigger's ``within`` window. So the retrain flow checks for itself, against
what the registry remembers: the last retrain's start time (a cooldown) and the data
version the champion was trained on (no new labelled data, nothing to learn from).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Go:
    """Whether the retrain proceeds, and why, in a sentence."""

    proceed: bool
    reason: str


def retrain_guard(now: datetime, last_start: datetime | None, cooldown_hours: float, champion_data_md5: str | None,
                  data_md5: str | None, force: bool = False) -> Go:
    """Proceed unless the last retrain started within the cooldown or the data is the champion's.

    ``data_md5`` None: the data is not known yet (the flow checks the cooldown before it
    ingests anything). ``force`` (a retrain started by hand) skips both guards.
    """
    if force:
        return Go(True, "forced: the cooldown and the new-data check are skipped")
    if last_start is not None and cooldown_hours > 0:
        ends = last_start + timedelta(hours=cooldown_hours)
        if now < ends:
            return Go(False, f"cooldown: the last retrain started at {last_start:%Y-%m-%d %H:%M} UTC and "
                             f"monitor.cooldown_hours={cooldown_hours:g} keeps the next one until {ends:%Y-%m-%d %H:%M} UTC")
    if data_md5 is None:
        return Go(True, "outside the cooldown")
    if champion_data_md5 and champion_data_md5 == data_md5:
        return Go(False, f"no new labelled data: data version {data_md5[:12]} is the one the champion was trained on; "
                         "add labelled data (transferops data add) and the next drift event retrains")
    return Go(True, "new labelled data since the champion's version" + ("" if champion_data_md5 else " (no champion yet)"))
