"""What accounts tells the apps above it, without importing them (imports run one way: billing
imports accounts). Sent synchronously inside the sender's transaction, so what a receiver writes
(billing's trial credit) commits or rolls back with the tenant or the confirmation itself, and a
receiver that fails fails the sender's call, as if the two were one function.

- `tenant_created(tenant, owner, trial)`: a tenant and its first owner's membership exist;
  `trial` is True when accounts' rules give it the trial credit (asked for, and the owner's
  address is confirmed).
- `email_confirmed(user, personal_tenant)`: the user proved their address through the mailed
  link; `personal_tenant` is theirs (or None), now due the trial credit it waited for.
"""

from __future__ import annotations

from django.dispatch import Signal

tenant_created = Signal()
email_confirmed = Signal()
