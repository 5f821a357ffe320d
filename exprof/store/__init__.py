"""The event store: the only package that speaks SQL.

`engine` opens, migrates and appends; `events` holds the event types; `projections`
derives per-run state from events; `record` reads a run's snapshot back; `leases`
holds who works on a run.
"""
