"""Elastic scaling on SLO signals: the pure policy core and its baselines.

`Autoscaler.on_tick(signals, now_s) -> Plan` decides; the live scaler (services/scaler/server.py)
and the simulator (services/sim/scaling.py) only gather signals and carry out the plan's actions.
No I/O and no clock here: time is passed in, so the same objects run on the wall clock and on a
simulated one.
"""

from services.scaler.autoscale.actions import Drain, Flip, Plan, Remove, Start, Undrain
from services.scaler.autoscale.config import AutoscaleConfig
from services.scaler.autoscale.pd import PDAutoscaler, PDConfig, PDSignals, RoleLoad
from services.scaler.autoscale.policy import Autoscaler
from services.scaler.autoscale.signals import InstanceSignal, Phase, Signals, StartKind

__all__ = ["AutoscaleConfig", "Autoscaler", "Drain", "Flip", "InstanceSignal", "PDAutoscaler", "PDConfig", "PDSignals",
           "Phase", "Plan", "Remove", "RoleLoad", "Signals", "Start", "StartKind", "Undrain"]
