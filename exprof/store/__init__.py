"""The event store: the only package that speaks SQL.

`engine` opens, migrates and appends; `events` holds the event types and maps stored
rows back to them; `projections` derives per-run state from events; `queries` holds
the reads; `record` reads a run's snapshot back; `leases` holds who works on a run and
`workers` how several share one; `checks` is what `exprof doctor` asks.
"""
