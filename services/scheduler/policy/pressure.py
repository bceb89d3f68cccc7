"""HFX's pressure window (PolicyConfig.defer_slack_ms, pressure_window_ms, release_spacing): a
request that cannot wait fails, or one waited until it was hopeless, and for a window loose
requests are deferred and best effort held (docs/SCHEDULING.md). Who last renewed it is kept, so
that a request is not held by pressure it alone caused. Pure state over the times it is given."""

from __future__ import annotations

from dataclasses import dataclass

from services.scheduler.policy.base import PolicyConfig


@dataclass
class Pressure:
    config: PolicyConfig
    until_s: float = float("-inf")
    # Who last renewed the pressure, and until when the others' renewals hold it (press).
    pressed_by: str = ""
    others_until_s: float = float("-inf")

    def on(self, now_s: float) -> bool:
        return self.config.defer_slack_ms > 0 and now_s < self.until_s

    def press(self, request_id: str, now_s: float) -> None:
        """`request_id` failed (or was found hopeless after waiting): pressure for a window. Every
        renewal is later than the one before, so the latest until is the window's end, and the
        previous renewer's until (kept when another renews) bounds every other renewal."""
        until_s = now_s + self.config.pressure_window_ms / 1000.0
        if request_id != self.pressed_by:
            self.others_until_s = max(self.others_until_s, self.until_s)
            self.pressed_by = request_id
        self.until_s = until_s

    def by_others(self, request_id: str, now_s: float) -> bool:
        """Under pressure that some request other than `request_id` opened or renewed. The
        pressure one request's own miss opened buys nothing for it (issue 9, eighth session:
        a code request due on arrival that fit nowhere opened a window, turned best effort a few
        ms later and waited out its own window, a sure miss, where a peer placing it at once met
        73% of the class)."""
        if not self.on(now_s):
            return False
        until_s = self.others_until_s if request_id == self.pressed_by else self.until_s
        return now_s < until_s

    def releasing(self, now_s: float) -> bool:
        """The window after pressure ended, in which deferred requests are released paced."""
        return (self.config.release_spacing > 0
                and now_s < self.until_s + self.config.pressure_window_ms / 1000.0)
