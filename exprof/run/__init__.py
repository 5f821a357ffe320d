"""How a run runs: the runner picks a loop, each loop drives one Session.

runner.py    run / resume / rescore: pick a loop, turn its end into a RunResult
session.py   Session: store, lease, seq, progress, heartbeat, signals, budget;
             record(sample, outcome) is where an answer is scored and queued
mock.py      the mock (and rescore) loop
live.py      the live loop: concurrent requests through the SDK, Ctrl-C grace
batch.py     the Message Batches loop, and `exprof cancel`
judge.py     the grading phase after the answers
claims.py    the samples a live worker claims from the store
budget.py    budget_usd: where the budget stops a run
cache.py     answers reused from the store (`cache: true`)
"""
