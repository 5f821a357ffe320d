"""Everything that produces an Outcome for a Sample: the mock, the live SDK client, and
their pacing. A client never writes events; the runner records what it returns."""
