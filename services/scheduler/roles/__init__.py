"""P/D role changes decided on SLO signals (issue 11): a pure core over the scheduler's snapshot,
its queue and the time (`signals.py` reads the pressure of each stage, `policy.py` decides), run
by the live scheduler (`services/scheduler/role_loop.py`, opt-in) and by `hfx sim`
(`services/sim/roles.py`)."""

from services.scheduler.roles.policy import RoleConfig, RoleDecision, RolePolicy
from services.scheduler.roles.signals import StagePressure, stage_pressure

__all__ = ["RoleConfig", "RoleDecision", "RolePolicy", "StagePressure", "stage_pressure"]
